"""Shared by the tests of the built-in passes (plugins/gpuxc_passes): a pass context and manager,
running and comparing models on ONNX Runtime, and small models built in code."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gpuxc.bundle.compare import DEFAULT_TOLERANCE, compare
from gpuxc.ort_session import run_onnxruntime
from gpuxc.passes import PassContext, PassManager, PassRecord, PassSpec
from gpuxc.plugin import get_registry
from gpuxc.project.graph import iter_nodes


@pytest.fixture
def ctx(tmp_path: Path) -> PassContext:
    work = tmp_path / "work"
    work.mkdir()
    return PassContext(workdir=work, target="cpu", model_dir=tmp_path, project_dir=tmp_path)


@pytest.fixture
def manager() -> PassManager:
    return PassManager(get_registry())


def run_model(model: onnx.ModelProto | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    source = model if isinstance(model, Path) else model.SerializeToString()
    return run_onnxruntime(source, inputs, level="none")


def assert_close(source: onnx.ModelProto, result: onnx.ModelProto | Path, inputs: dict[str, np.ndarray],
                 precision: str) -> dict:  # fmt: skip
    report = compare(run_model(source, inputs), run_model(result, inputs), DEFAULT_TOLERANCE[precision])
    assert report["status"] == "passed", report["failures"]
    return report


def ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in iter_nodes(model.graph))


def apply(manager: PassManager, ctx: PassContext, model: onnx.ModelProto, name: str, params: dict | None = None,
          required: bool = True) -> tuple[onnx.ModelProto, PassRecord]:  # fmt: skip
    out, [record] = manager.run(model, [PassSpec(name, params or {}, required=required)], ctx)
    return out, record


def rng_inputs(**shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def model_of(nodes: list, inputs: list, outputs: list, initializers: list | None = None,
             check: bool = True) -> onnx.ModelProto:  # fmt: skip
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def f32(name: str, shape: list | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weights(*shape: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def unknown_dims_model() -> onnx.ModelProto:
    """``x[?, ?]`` (rank 2, no dim known) -> Identity -> MatMul(W[5, 3]): only width 5 works, which no
    default gives (the Identity is there for simplifiers to remove)."""
    nodes = [helper.make_node("Identity", ["x"], ["x1"]), helper.make_node("MatMul", ["x1", "W"], ["y"])]
    return model_of(
        nodes, [f32("x", [None, None])], [f32("y", [None, 3])], [numpy_helper.from_array(weights(5, 3), "W")]
    )
