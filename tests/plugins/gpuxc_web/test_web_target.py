"""`gpuxc compile -t web`: the bundle's page verified in headless Chromium (WASM), and every way it is not.

Real browser, real ONNX Runtime Web (vendored from the npm package). Without Chromium or
Playwright the verified cases skip with the reason, and the unverified case still runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from gpuxc_web.target import find_chromium
from onnx import TensorProto, helper

from fixtures import has_module, models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import CompileError

BROWSER = pytest.mark.skipif(
    find_chromium() is None or not has_module("playwright"),
    reason="needs Chromium (apt-get install chromium) and Playwright (pip install playwright)",
)


def project(folder: Path, model: onnx.ModelProto, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    models.save(model, folder / "model.onnx")
    (folder / "gpux.yml").write_text(f"name: webtest\nmodel:\n  source: model.onnx\n{extra}", encoding="utf-8")
    return folder


def manifest(bundle: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))


@BROWSER
def test_a_cnn_is_verified_in_headless_chromium_on_wasm(tmp_path: Path) -> None:
    [result] = compile_project(project(tmp_path / "p", models.tiny_cnn()), ["web"], tmp_path / "dist", use_cache=False)
    doc = manifest(result.path)
    assert doc["verification"]["status"] == "passed", doc["verification"]
    runtime = doc["verification"]["runtime"]
    assert "Chromium" in runtime and "wasm" in runtime and "onnxruntime-web" in runtime
    settings = doc["artifact"]["settings"]
    assert settings["ort_web_version"] == "1.30.0" and settings["ort_web_integrity"].startswith("sha512-")
    assert settings["webgpu"]["verified"] is False and "GPU adapter" in settings["webgpu"]["reason"]
    for name in (
        "web/index.html",
        "web/runner.mjs",
        "web/ort/ort-wasm-simd-threaded.asyncify.wasm",
        "model/model.onnx",
    ):
        assert (result.path / name).is_file(), name
    requirements = (result.path / "requirements.txt").read_text(encoding="utf-8")
    assert "playwright==" in requirements and "fastapi" not in requirements  # serve is a static page
    assert "Cross-Origin-Opener-Policy" in (result.path / "README.md").read_text(encoding="utf-8")
    listed = {f["path"] for f in doc["files"]}
    assert "web/ort/ort.webgpu.min.mjs" in listed  # vendored files are covered by the integrity check


@BROWSER
def test_image_preprocessing_runs_in_the_browser_too(tmp_path: Path) -> None:
    config = "preprocessing:\n  resize: [32, 32]\n  normalize: imagenet\n  resize_mode: letterbox\n"
    [result] = compile_project(project(tmp_path / "p", models.tiny_cnn(), config), ["web"], tmp_path / "dist",
                               use_cache=False)  # fmt: skip
    doc = manifest(result.path)
    assert doc["verification"]["status"] == "passed", doc["verification"]
    assert doc["inputs"][0]["dtype"] == "uint8" and doc["preprocessing"]["kind"] == "image"


@BROWSER
def test_an_op_onnx_runtime_web_cannot_run_fails_naming_it(tmp_path: Path) -> None:
    # A custom-domain op: no runtime has it, and ONNX Runtime Web's own error must name it.
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example.gpuxc")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example.gpuxc", 1)])  # fmt: skip
    model.ir_version = 8
    folder = project(tmp_path / "p", model)
    with pytest.raises(Exception) as caught:  # the reference run (ONNX Runtime) or the browser refuses it
        compile_project(folder, ["web"], tmp_path / "dist", use_cache=False)
    assert "Frobnicate" in str(caught.value)
    assert not (tmp_path / "dist" / "webtest-1.0.0-web").exists()  # nothing half-written


@BROWSER
def test_an_op_native_onnx_runtime_runs_but_the_browser_lacks_fails_the_build_naming_it(tmp_path: Path) -> None:
    """ai.onnx.ml ops run in ONNX Runtime CPU (the reference passes) but not in ONNX Runtime Web's
    build: the compile stops with the browser's own error, naming the op, and publishes nothing."""
    folder = project(tmp_path / "p", models.ml_domain())
    with pytest.raises(CompileError) as caught:
        compile_project(folder, ["web"], tmp_path / "dist", use_cache=False)
    message = str(caught.value)
    assert "target 'web'" in message and "No Op registered for Normalizer" in message, message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "dist" / "webtest-1.0.0-web").exists()


def test_without_chromium_the_bundle_is_unverified_never_passed(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("GPUXC_CHROMIUM", str(tmp_path / "no-such-browser"))
    try:
        [result] = compile_project(project(tmp_path / "p", models.mlp()), ["web"], tmp_path / "dist", use_cache=False)
    except CompileError as exc:  # no network and no cached onnxruntime-web: a clear error instead
        assert "onnxruntime-web" in str(exc)
        return
    doc = manifest(result.path)
    assert doc["verification"]["status"] == "unverified"
    assert "no Chromium" in doc["verification"]["reason"]


def test_the_ir_version_is_lowered_to_what_onnx_runtime_web_reads() -> None:
    from gpuxc_web.target import MAX_IR_VERSION, _readable_ir

    model = models.mlp()
    model.ir_version = MAX_IR_VERSION + 1  # what recent onnx writes by default
    lowered, was = _readable_ir(model)
    assert lowered.ir_version == MAX_IR_VERSION and was == MAX_IR_VERSION + 1
    assert model.ir_version == MAX_IR_VERSION + 1  # the caller's model is not changed
    same, none = _readable_ir(lowered)
    assert same is lowered and none is None
