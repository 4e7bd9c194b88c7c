"""``quantize-int4`` and precision ``int4-weights``: weight-only 4-bit MatMuls (ONNX Runtime MatMulNBits, NNCF)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from gpuxc_passes._common import signature_of
from onnx import helper, numpy_helper

from fixtures import models
from fixtures.minilm import tiny_bert
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import ConfigError, GpuxcError, VerificationFailed
from gpuxc.passes import PassContext, PassManager
from gpuxc.plugin import get_registry
from gpuxc.project.config_load import load_config
from gpuxc.targets import Variant
from tests.plugins.gpuxc_passes.conftest import apply, f32, model_of, ops, run_model, weights

ROOT = Path(__file__).resolve().parents[3]


def matmuls(*sizes: tuple[int, int], named: bool = True) -> onnx.ModelProto:
    """x -> MatMul(W0) -> MatMul(W1) ...: one MatMul per ``(in, out)`` weight size."""
    nodes, inits, prev = [], [], "x"
    for i, (k, n) in enumerate(sizes):
        out = "y" if i == len(sizes) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [out], name=f"mm{i}" if named else ""))
        inits.append(numpy_helper.from_array(weights(k, n, seed=i), f"W{i}"))
        prev = out
    return model_of(nodes, [f32("x", ["N", sizes[0][0]])], [f32("y", ["N", sizes[-1][1]])], inits)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_large_matmul_weights_become_4_bit(manager: PassManager, ctx: PassContext) -> None:
    source = matmuls((256, 512))
    out, record = apply(manager, ctx, source, "quantize-int4")
    assert record.status == "applied" and record.stats["nodes_quantized"] == 1
    assert ops(out)["MatMulNBits"] == 1 and "MatMul" not in ops(out)
    node = next(n for n in out.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    # 4 bits per weight plus one fp32 scale per 32: about a sixth of the fp32 bytes.
    assert record.stats["weight_bytes"]["after"] < record.stats["weight_bytes"]["before"] / 5
    x = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    assert cosine(run_model(source, {"x": x})["y"], run_model(out, {"x": x})["y"]) > 0.99


def test_small_matmuls_stay_float(manager: PassManager, ctx: PassContext) -> None:
    out, record = apply(manager, ctx, matmuls((256, 512), (512, 8)), "quantize-int4")
    assert record.stats["candidates"] == 1 and ops(out)["MatMulNBits"] == 1 and ops(out)["MatMul"] == 1
    _, record = apply(manager, ctx, models.mlp(), "quantize-int4")
    assert record.status == "skipped" and "at least 65536 values" in record.reason
    out, record = apply(manager, ctx, models.mlp(), "quantize-int4", {"min_weight_elements": 16})
    assert record.status == "skipped" or ops(out).get("MatMulNBits", 0) == 0  # mlp has Gemm, not MatMul


def test_nodes_to_exclude_and_unnamed_matmuls(manager: PassManager, ctx: PassContext) -> None:
    two = matmuls((256, 256), (256, 256))
    out, record = apply(manager, ctx, two, "quantize-int4", {"nodes_to_exclude": ["mm1"]})
    assert ops(out)["MatMulNBits"] == 1 and [n.name for n in out.graph.node if n.op_type == "MatMul"] == ["mm1"]
    out, record = apply(manager, ctx, matmuls((256, 256), (256, 256), named=False), "quantize-int4")
    assert record.stats["nodes_named"] == 2 and ops(out)["MatMulNBits"] == 2


def test_importing_the_quantizer_leaves_logging_alone(tmp_path: Path) -> None:
    """onnxruntime's matmul_nbits_quantizer calls logging.basicConfig(level=INFO) on import."""
    onnx.save(matmuls((256, 256)), tmp_path / "m.onnx")
    script = f"""
import logging, onnx
from pathlib import Path
from gpuxc.passes import PassContext, PassManager, PassSpec
from gpuxc.plugin import get_registry
ctx = PassContext(workdir=Path({str(tmp_path)!r}), target="cpu", model_dir=Path("."), project_dir=Path("."))
model = onnx.load({str(tmp_path / "m.onnx")!r})
_, [r] = PassManager(get_registry()).run(model, [PassSpec("quantize-int4", {{}})], ctx)
root = logging.getLogger()
print(r.status, len(root.handlers), root.level)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.split() == ["applied", "0", str(30)]
    assert "INFO" not in proc.stderr


def _config(make_project, build: dict, model: onnx.ModelProto):
    return load_config(Path(make_project(model, {"build": build})) / "gpux.yml")


def test_auto_tries_int4_only_when_opted_in(make_project) -> None:
    cpu = get_registry().target("cpu")()
    options = cpu.Options()
    plain = _config(make_project, {"optimize": "auto"}, models.mlp())
    assert "int4-weights" not in [v.name for v in cpu.variants(plain, options, auto=True)]
    opted = _config(make_project, {"optimize": "auto", "optimize_include": ["int4-weights"]}, models.mlp())
    assert "int4-weights" in [v.name for v in cpu.variants(opted, options, auto=True)]
    plan = cpu.plan(opted, signature_of(tiny_bert()), options, Variant("int4-weights", "int4-weights"))
    assert [s.name for s in plan][-1] == "quantize-int4"
    assert "transformer-fusion" not in [s.name for s in plan]


def test_optimize_include_accepts_only_opt_in_variants(make_project) -> None:
    with pytest.raises(GpuxcError, match="optimize_include"):
        _config(make_project, {"optimize_include": ["fp16"]}, models.mlp())


def test_targets_without_contrib_ops_refuse_int4(make_project) -> None:
    config = _config(make_project, {"precision": "int4-weights"}, models.mlp())
    tensorrt = get_registry().target("tensorrt")()
    with pytest.raises(ConfigError, match="int4-weights"):
        tensorrt.plan(config, signature_of(models.mlp()), tensorrt.Options(), Variant("int4-weights", "int4-weights"))


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_int4_weights_build_is_verified_at_the_int8_tolerance(make_project, tmp_path: Path, target: str) -> None:
    build = {"targets": [target], "precision": "int4-weights"}
    # int8's gate (cosine 0.999; atol/rtol 0.05 on 90% of elements) is too tight for 4-bit weights on random data.
    if target == "cpu":  # (NNCF keeps a model's only MatMul, its last layer, in int8: that one passes)
        with pytest.raises(VerificationFailed, match="after pass quantize-int4"):
            compile_project(make_project(matmuls((256, 256)), {"build": build}), [target], tmp_path / "dist")
    loose = {"max_mismatch_ratio": 1.0, "min_cosine": 0.99}
    project = make_project(matmuls((256, 256)), {"build": {**build, "tolerance": loose}})
    [result] = compile_project(project, [target], tmp_path / "dist")
    manifest = json.loads((result.path / "gpux-bundle.json").read_text(encoding="utf-8"))
    assert result.verification["status"] == "passed"
    assert manifest["verification"]["tolerance"]["atol"] == 0.05  # int8's default, not fp32's 1e-4
    if target == "cpu":
        assert "MatMulNBits" in {n.op_type for n in onnx.load(str(result.path / "model/model.onnx")).graph.node}
    else:
        assert manifest["artifact"]["settings"]["weights"] == "int4_sym"


@pytest.fixture(scope="module")
def minilm() -> tuple[Path, Path]:
    from fixtures.minilm import fetch_minilm

    try:
        return fetch_minilm()
    except RuntimeError as exc:
        pytest.fail(f"cannot fetch the MiniLM test model: {exc}")


def test_real_minilm_int4_keeps_sentence_similarity_order(manager: PassManager, ctx: PassContext, minilm) -> None:
    from tests.fixtures.test_minilm import SENTENCES, embed

    source = onnx.load(str(minilm[0]))
    out, record = apply(manager, ctx, source, "quantize-int4")
    assert record.stats["nodes_quantized"] == 36  # Q, K, V, output, FFN in, FFN out per layer
    e = embed(out, minilm[1], SENTENCES)
    ref = embed(source, minilm[1], SENTENCES)
    assert min(cosine(a, b) for a, b in zip(e, ref, strict=True)) > 0.9  # measured 0.96: lossy, hence opt-in and gated
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3
