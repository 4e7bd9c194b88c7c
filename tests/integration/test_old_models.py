"""Old models compile on every target: opset 6 upgraded, IR 3 initializer-inputs, the ``light``
model-zoo networks that ship inside the onnx wheel, and a reference from the source model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from fixtures import has_module, models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import CompileError, VerificationFailed
from tests.integration.conftest import assert_one_error_line, load_npz, write_project

LIGHT = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"


def manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))


def runner_infer(bundle: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bundle's generated runner, in a fresh interpreter, as a user would call it."""
    np.savez(bundle.parent / "feeds.npz", **inputs)
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import runner; "
            "feeds = dict(np.load(sys.argv[2])); np.savez(sys.argv[3], **runner.load().infer(feeds))")  # fmt: skip
    result = bundle.parent / "outputs.npz"
    proc = subprocess.run([sys.executable, "-c", code, str(bundle), str(bundle.parent / "feeds.npz"), str(result)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return load_npz(result)


def openvino_on_source(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(inputs)[compiled.outputs[0]])


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_opset6_zoo_model_is_upgraded_verified_against_the_source_and_runs(tmp_path: Path, target: str) -> None:
    project = write_project(tmp_path / "zoo", models.zoo_opset6_cnn(), name="zoo")
    [result] = compile_project(project, [target], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    m = manifest(result.path)
    upgrade = m["source"]["upgrade"]
    assert (upgrade["from_opset"], upgrade["to_opset"], upgrade["initializer_inputs_dropped"]) == (6, 17, 9)
    assert len(upgrade["repairs"]) == 2  # the axis-1 bias broadcast and the per-channel PRelu slope
    # ONNX Runtime cannot run the opset-6 source: OpenVINO computed the reference, and it says why.
    assert m["reference"]["runtime"] == "openvino"
    assert m["reference"]["fallbacks"][0].startswith("onnxruntime: ONNX Runtime cannot load the model")
    assert [t["name"] for t in m["inputs"]] == ["x"]
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = runner_infer(result.path, {"x": x})["y"]
    np.testing.assert_allclose(out, openvino_on_source(project / "model.onnx", {"x": x}), rtol=1e-4, atol=1e-5)


def test_a_wrong_conversion_is_caught_and_names_the_converted_ops(tmp_path: Path) -> None:
    # The PRelu slope in a Constant node is not repaired: the upgraded model is wrong, and the
    # compile says so, naming what onnx.version_converter rewrote, instead of shipping it.
    project = write_project(tmp_path / "zoo", models.zoo_opset6_cnn(prelu_slope_in_constant=True), name="zoo")
    with pytest.raises((VerificationFailed, CompileError)) as info:
        compile_project(project, ["cpu"], tmp_path / "dist")
    message = info.value.message
    assert "upgraded from opset 6" in message and "PRelu" in message
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_ir3_constant_of_shape_weights_bundle_takes_only_the_real_input(tmp_path: Path, target: str) -> None:
    project = write_project(tmp_path / "ir3", models.ir3_constant_of_shape_weights(), name="ir3")
    [result] = compile_project(project, [target], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    assert [t["name"] for t in manifest(result.path)["inputs"]] == ["x"]
    x = np.ones((1, 3, 8, 8), np.float32)
    # ones * 0.05 over 27 taps, interior pixels: 1.35; the border sees fewer taps. Mean over 8x8:
    want = 0.05 * (3 * 3 * 3) * ((6 * 6 + 4 * 6 * 2 / 3 + 4 * 4 / 9) / 64)
    np.testing.assert_allclose(runner_infer(result.path, {"x": x})["y"].ravel(), [want] * 4, rtol=1e-5)


# (light_squeezenet is left out: its constant-filled weights make every logit ~1e10 and equal,
# and OpenVINO's f32 accumulation order moves its softmax by 0.12: verification refuses it.)
@pytest.mark.parametrize("name", ["light_shufflenet", "light_inception_v1"])
def test_onnx_zoo_light_models_compile_for_cpu_openvino_and_coreml(tmp_path: Path, name: str) -> None:
    """Real IR 3 networks from the onnx wheel (weights built by ConstantOfShape)."""
    targets = ["cpu", "openvino"] + (["coreml"] if has_module("coremltools") else [])
    source = onnx.load(str(LIGHT / f"{name}.onnx"))
    project = write_project(tmp_path / name, source, name=name.replace("_", "-"))
    results = {r.target: r for r in compile_project(project, targets, tmp_path / "dist")}
    assert results["cpu"].verification["status"] == "passed"
    assert results["openvino"].verification["status"] == "passed"
    if "coreml" in results:
        assert results["coreml"].verification["status"] == "unverified"  # CoreML predicts on macOS only
    for bundle in (results["cpu"].path, results["openvino"].path):
        m = manifest(bundle)
        assert len(m["inputs"]) == 1 and m["source"]["upgrade"]["initializer_inputs_dropped"] > 0
        feeds = load_npz(bundle / "reference" / "inputs.npz")
        expected = load_npz(bundle / "reference" / "outputs.npz")
        got = runner_infer(bundle, feeds)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-3, atol=1e-4)


def test_cli_refuses_a_model_no_runtime_can_upgrade_in_one_line(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 3, opset_import: ["" : 6]>\ng (float[1,2,4,4] x) => (float[1,2,4,4] y) { y = ImageScaler(x) }'
    )
    project = write_project(tmp_path / "old", proto, name="old")
    proc = subprocess.run([sys.executable, "-m", "gpuxc", "compile", str(project), "-t", "cpu", "-o",
                           str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 4, proc.stderr  # ModelError
    assert_one_error_line(proc.stderr, contains=["cannot upgrade opset 6 to 17", "ImageScaler"])

