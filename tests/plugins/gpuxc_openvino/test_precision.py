"""OpenVINO mixed precision: the keep-in-f32 mechanism the CPU plugin honours, the ranking measured on
the plugin, and the repair of bf16-hint and NNCF int8 variants (plugins/gpuxc_openvino/precision.py,
sensitivity.py; gpuxc/build/repair.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.targets import Variant
from tests.integration.conftest import write_project

ov = pytest.importorskip("openvino", reason="the openvino target needs `pip install gpuxc[openvino]`")

from gpuxc_openvino.precision import keep_in_f32, runtime_precisions  # noqa: E402
from gpuxc_openvino.sensitivity import rank_ir  # noqa: E402
from gpuxc_openvino.target import OpenVinoTarget  # noqa: E402

HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no BF16 capability (OpenVINO would emulate it)")


def centered_model(d: int = 64) -> onnx.ModelProto:
    """``y = center(x @ Ws) + relu(x @ W1) @ W2``: Ws is 50 + N(0, 1/8), so bf16's 0.25 step at 50 wipes
    out the part that survives centring. ``mm_s`` is the one node bf16 cannot hold; mm1/mm2 are fine."""
    rng = np.random.default_rng(0)
    weights = {"Ws": 50 + rng.standard_normal((d, d)) / 8, "W1": rng.standard_normal((d, d)) / np.sqrt(d),
               "W2": rng.standard_normal((d, d)) / np.sqrt(d)}  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "Ws"], ["s"], name="mm_s"),
        helper.make_node("ReduceMean", ["s"], ["sm"], name="mean", axes=[1], keepdims=1),
        helper.make_node("Sub", ["s", "sm"], ["c"], name="center"),
        helper.make_node("MatMul", ["x", "W1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "W2"], ["h2"], name="mm2"),
        helper.make_node("Add", ["c", "h2"], ["y"], name="out"),
    ]
    graph = helper.make_graph(
        nodes, "centered", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, d])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def infer(xml: Path | Any, hint: str, x: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    compiled = ov.Core().compile_model(xml if not isinstance(xml, Path) else str(xml), "CPU",
                                       {"INFERENCE_PRECISION_HINT": hint})  # fmt: skip
    out = np.array(compiled.create_infer_request().infer({"x": x})[compiled.outputs[0]])
    return out, runtime_precisions(compiled)


def write_ir(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ov_model = OpenVinoTarget()._convert(model, folder)
    ov.save_model(ov_model, str(folder / "model.xml"), compress_to_fp16=False)
    return folder / "model.xml"


def manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))


@needs_bf16
def test_keeping_one_node_in_f32_restores_bf16_accuracy_and_the_rest_stays_bf16(tmp_path: Path) -> None:
    xml = write_ir(centered_model(), tmp_path)
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    want, _ = infer(xml, "f32", x)
    got, precisions = infer(xml, "bf16", x)
    assert cosine(want, got) < 0.99  # ~0.90: bf16 misses any tolerance
    assert precisions["mm_s"] == precisions["mm1"] == "bf16"
    assert keep_in_f32(xml, ["mm_s", "nowhere"]) == ["nowhere"]
    got, precisions = infer(xml, "bf16", x)
    assert cosine(want, got) > 0.99999
    assert precisions["mm_s"] == "f32" and precisions["mm1"] == precisions["mm2"] == "bf16"


@needs_bf16
def test_a_python_rt_info_string_is_not_the_attribute(tmp_path: Path) -> None:
    # Why the IR is edited: the same key set from Python is a string, which the plugin ignores or rejects.
    ov_model = ov.Core().read_model(str(write_ir(centered_model(), tmp_path)))
    [node] = [op for op in ov_model.get_ordered_ops() if op.get_friendly_name() == "mm_s"]
    node.get_rt_info()["DisablePrecisionConversion"] = "dynamic:f16"
    _, precisions = infer(ov_model, "bf16", np.ones((1, 64), np.float32))
    assert precisions["mm_s"] == "bf16"


def test_compute_ops_are_named_after_their_onnx_nodes_through_bn_fusion(tmp_path: Path) -> None:
    # convert_model folds BatchNormalization into the Conv and names it "Multiply_<n>"; the IR must say "conv".
    xml = write_ir(models.tiny_cnn(), tmp_path)
    layers = {layer.get("name"): layer.get("type") for layer in __import__("xml.etree.ElementTree").etree.
              ElementTree.parse(xml).getroot().iter("layer")}  # fmt: skip
    assert layers.get("conv") == "Convolution"
    assert layers.get("fc") == "MatMul"  # Gemm: MatMul + bias, and the output keeps its tensor name


@needs_bf16
def test_the_ranking_on_the_plugin_puts_the_fragile_node_first(tmp_path: Path) -> None:
    xml = write_ir(centered_model(), tmp_path)
    rng = np.random.default_rng(2)
    model = ov.Core().read_model(str(xml))
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(3)]
    ranking = rank_ir(model, "f32", model, "bf16", feeds)
    print([(s.node, s.error, s.contribution) for s in ranking])
    # mm_s's own output is off by only ~0.4% of its size (50 x sum(x)): the damage shows once it is
    # centred, but it is still the largest contribution by far.
    assert ranking[0].node == "mm_s"
    assert all(s.contribution < ranking[0].contribution / 2 for s in ranking[1:])
    # mm2 is downstream of mm1 only: its contribution is net of what mm1 passed on.
    mm2 = next(s for s in ranking if s.node == "mm2")
    assert mm2.contribution <= mm2.error


@needs_bf16
def test_a_fixed_bf16_build_that_misses_tolerance_ships_repaired(tmp_path: Path) -> None:
    build = {"precision": "fp16", "options": {"openvino": {"inference_precision": "bf16"}}}
    project = write_project(tmp_path / "p", centered_model(), {"build": build}, name="centered")
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    assert result.variant == "fp16+keep1" and result.verification["status"] == "passed"
    data = manifest(result.path)
    failed, repaired = data["build"]["candidates"]
    assert failed["status"] == "failed" and failed["sensitive_nodes"][0]["node"] == "mm_s"
    assert repaired["kept_float"] == ["mm_s"]
    # As the CPU plugin runs it (runtimePrecision): the kept MatMul in f32, the other two in bf16.
    assert repaired["layer_precisions"] == {"bf16": 2, "f32": 1}
    settings = data["artifact"]["settings"]
    assert settings["inference_precision"] == "bf16" and settings["requires_isa"] == ["BF16"]
    # The precision is in the IR: the bundle's own runner reproduces it with no setting.
    assert "DisablePrecisionConversion" in (result.path / "model" / "model.xml").read_text(encoding="utf-8")


def test_the_int8_variants_follow_the_host(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", centered_model(),
                            {"build": {"optimize": "auto", "calibration": {"random": True, "samples": 4}}})  # fmt: skip
    from gpuxc.project.config_load import load_config

    config = load_config(project / "gpux.yml")
    target = OpenVinoTarget()
    names = [v.name for v in target.variants(config, target.Options(), auto=True)]
    assert names[0] == "fp32" and "int8-static" in names
    assert ("int8-static-bf16-hint" in names) == HAS_BF16 == ("fp32-bf16-hint" in names)
    assert target.keeps_float(Variant("int8-static", "int8-static", {"hint": "f32"}))
    assert not target.keeps_float(Variant("fp32", "fp32", {"hint": "f32"}))


def test_nncf_int8_is_repaired_by_its_ignored_scope(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((16, 1, 64)).astype(np.float32))
    build = {"precision": "int8-static", "calibration": {"data": "./calib.npz", "samples": 8}}
    project = write_project(folder, models.outlier_mlp(), {"build": build}, name="outlier")
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    assert result.variant.startswith("int8-static+keep") and result.verification["status"] == "passed"
    data = manifest(result.path)
    failed, repaired = data["build"]["candidates"]
    # mm3 produces the graph output y, and OpenVINO's ONNX frontend names such a node after its output.
    assert failed["sensitive_nodes"][0]["node"] == "y" and repaired["kept_float"] == ["y"]
    assert data["artifact"]["settings"]["requires_isa"] == ["INT8"]
    # NNCF's progress bars ("Statistics collection", "Applying Fast Bias correction") stay off the console.
    printed = capfd.readouterr()
    assert "Statistics collection" not in printed.out + printed.err


@needs_bf16
def test_int8_with_bf16_keeps_a_node_out_of_nncf_and_in_f32(tmp_path: Path) -> None:
    # int8-static-bf16-hint: a kept node is left out of the quantization (no FakeQuantize feeds it)
    # and marked f32, or the bf16 hint would still round it.
    from gpuxc.project.config_load import load_config
    from gpuxc.project.model import load_model
    from gpuxc.targets import CompileContext

    build = {"precision": "int8-static", "calibration": {"random": True, "samples": 4}}
    project = write_project(tmp_path / "p", models.outlier_mlp(), {"build": build})
    config = load_config(project / "gpux.yml")
    target = OpenVinoTarget()
    signature = load_model(project / "model.onnx").signature
    variant = Variant("int8-static-bf16-hint+keep1", "int8-static", {"hint": "bf16", "keep_float": ["mm2"]})
    ctx = CompileContext(config, signature, target.Options(), tmp_path / "b", tmp_path / "w", variant)
    (tmp_path / "w").mkdir()
    artifact = target.compile(onnx.load(project / "model.onnx"), ctx)
    assert artifact.settings["requires_isa"] == ["INT8", "BF16"] and artifact.settings["kept_float"] == ["mm2"]
    ir = ov.Core().read_model(str(tmp_path / "b" / artifact.entry))
    fed_by_fq = {op.get_friendly_name() for op in ir.get_ordered_ops()
                 if any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())}  # fmt: skip
    assert "mm1" in fed_by_fq and "mm2" not in fed_by_fq
    compiled = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    assert runtime_precisions(compiled)["mm2"] == "f32"


@pytest.mark.network
@pytest.mark.parametrize("key", ["ppocrv4-det", "ppocrv4-rec"])
def test_ppocr_names_are_onnx_names_and_unique(key: str, tmp_path: Path) -> None:
    # det: BN folded into 62 Convs, SE blocks whose bias Add keeps the ONNX Conv's name; rec: attention
    # MatMuls fused into ScaledDotProductAttention, so the frontend has compute ops the IR lacks.
    from gpuxc_openvino.precision import compute_ops

    from fixtures.real_models import CATALOG, fetch

    ov_model = OpenVinoTarget()._convert(onnx.load(fetch(CATALOG[key])), tmp_path)
    names = [op.get_friendly_name() for op in compute_ops(ov_model)]
    assert names and all(n.startswith(("p2o.Conv", "p2o.MatMul")) for n in names)
    others = {op.get_friendly_name() for op in ov_model.get_ordered_ops()} - set(names)
    assert len(set(names)) == len(names) and not set(names) & others  # NNCF would rename a clash


@needs_bf16
def test_keeping_a_compute_op_keeps_the_ops_that_feed_it(tmp_path: Path) -> None:
    # s = (x + 50) @ W with zero-sum columns: bf16 rounds x + 50 to 0.25 steps in the Add, before the
    # MatMul sees it. The ranking charges that error to the MatMul; keeping it alone cannot remove it.
    from gpuxc_openvino.precision import with_feeders

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w -= w.mean(axis=0)
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[1,64] x) => (float[1,64] s) { h = Add(x, c)\n s = MatMul(h, W) }"
    )
    model.graph.initializer.extend([numpy_helper.from_array(np.full((1, 64), 50, np.float32), "c"),
                                    numpy_helper.from_array(w, "W")])  # fmt: skip
    model.graph.node[0].name = "add"  # the MatMul is named "s" by the frontend, after the graph output
    xml = write_ir(model, tmp_path)
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    want, _ = infer(xml, "f32", x)
    ir = ov.Core().read_model(str(xml))
    assert with_feeders(ir, ["s"]) == ["s", "add"]
    keep_in_f32(xml, ["s"])
    alone, _ = infer(xml, "bf16", x)
    keep_in_f32(xml, with_feeders(ir, ["s"]))
    fed, precisions = infer(xml, "bf16", x)
    assert cosine(want, alone) < 0.999 < 0.99999 < cosine(want, fed)
    assert precisions["add"] == precisions["s"] == "f32"
