"""onnxruntime quantizer failures the passes work around, each on the smallest model that shows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gpuxc.passes import PassContext, PassManager, PassSpec
from gpuxc.plugin import get_registry


def gemm_with_2d_bias() -> onnx.ModelProto:
    """What ORT's BASIC optimization makes of MatMul + Add (magika): Gemm whose bias C is [1, N]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "c")]  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_quantize_static_survives_the_int32_bias_adjustment_crash(tmp_path: Path) -> None:
    ctx = PassContext(workdir=tmp_path, target="cpu", model_dir=tmp_path, project_dir=tmp_path)
    spec = PassSpec("quantize-static", {"random": True, "samples": 4})
    out, [record] = PassManager(get_registry()).run(gemm_with_2d_bias(), [spec], ctx)
    assert record.status == "applied"
    assert record.stats["int32_bias_weight_adjust"].startswith("disabled")
    assert any(n.op_type == "DequantizeLinear" for n in out.graph.node)
