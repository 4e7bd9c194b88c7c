"""The web bundle's page (templates/web/index.html) and runner.mjs, in a real headless Chromium.

Bundles are built by hand here (model, reference npz, a minimal manifest, the vendored ONNX Runtime
Web files) so the page is tested apart from the web target. Skips, with the reason, when Chromium,
Playwright or the onnxruntime-web files are missing.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from gpuxc_web.ortweb import ORT_WEB_FILES
from gpuxc_web.target import find_chromium
from onnx import TensorProto, helper

from gpuxc.bundle.npz import write_reference

TEMPLATES = Path(__file__).resolve().parents[3] / "templates" / "web"
LOCAL_ORT_WEB = Path("/tmp/ortweb/package/dist")
CHROMIUM = find_chromium()
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.9995, "min_top1": 0.99, "max_mismatch_ratio": 0.001}
LABELS = ["cat", "dog", "bird", "fish"]


@pytest.fixture(scope="module")
def ort_web_dir() -> Path:
    """The pinned ONNX Runtime Web files, digests checked: $GPUXC_ORT_WEB_DIR (conftest points it at the
    user's gpuxc cache entry when there is one), else the unpacked package at LOCAL_ORT_WEB; never the
    registry from a test."""
    from gpuxc_web.ortweb import ORT_WEB_DIR_ENV, ensure_ort_web

    if os.environ.get(ORT_WEB_DIR_ENV):
        return ensure_ort_web().folder
    if LOCAL_ORT_WEB.is_dir():
        return ensure_ort_web(local=LOCAL_ORT_WEB).folder
    pytest.skip(f"no onnxruntime-web 1.30.0: set ${ORT_WEB_DIR_ENV} or run `python -m gpuxc_web.ortweb` once")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium (apt-get install chromium, or set GPUXC_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    # COOP/COEP make the page cross-origin isolated (SharedArrayBuffer, hence WASM threads).
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}  # fmt: skip

    isolate = True

    def end_headers(self) -> None:
        if self.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(root: Path, isolate: bool = True) -> str:
        handler = type("Handler", (_Handler,), {"isolate": isolate})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def make_bundle(root: Path, ort_dir: Path, model: onnx.ModelProto, inputs: dict[str, np.ndarray],
                outputs: dict[str, np.ndarray], labels: dict[str, list[str]] | None = None) -> Path:  # fmt: skip
    """A web bundle as the page sees it: model, web/ (page, runner, ORT files), reference, manifest."""
    (root / "model").mkdir(parents=True)
    onnx.save(model, str(root / "model" / "model.onnx"))
    (root / "web" / "ort").mkdir(parents=True)
    for name in ("runner.mjs", "index.html"):
        shutil.copyfile(TEMPLATES / name, root / "web" / name)
    for name in ORT_WEB_FILES:  # 27 MB of WASM: linked, not copied, per test
        (root / "web" / "ort" / name).symlink_to(ort_dir / name)
    write_reference(root, inputs, outputs)
    labels = labels or {}
    manifest = {
        "format": "gpux-bundle", "name": "page-test", "version": "1.0", "gpuxc_version": "test", "target": "web",
        "inputs": [{"name": k, "dtype": v.dtype.name, "shape": list(v.shape)} for k, v in inputs.items()],
        "outputs": [{"name": k, "dtype": v.dtype.name, "shape": list(v.shape), "labels": labels.get(k)}
                    for k, v in outputs.items()],
        "preprocessing": None,
        "verification": {"status": "passed", "tolerance": TOLERANCE},
    }  # fmt: skip
    (root / "gpux-bundle.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


def classifier() -> onnx.ModelProto:
    """x [1, 8] -> MatMul -> Add -> Softmax -> probs [1, 4]."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 4], rng.standard_normal((8, 4)).astype(np.float32).ravel())
    bias = helper.make_tensor("b", TensorProto.FLOAT, [4], rng.standard_normal(4).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])],
        [weight, bias],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def classifier_reference() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    import onnxruntime as ort

    inputs = {"x": np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)}
    session = ort.InferenceSession(classifier().SerializeToString(), providers=["CPUExecutionProvider"])
    return inputs, {"probs": session.run(None, inputs)[0]}


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 960, "height": 900})
    page.goto(url)
    page.wait_for_function("() => document.body.dataset.status !== 'loading'", timeout=120_000)
    return page


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_page_verifies_the_reference_on_wasm_and_shows_latency(browser, ort_web_dir, serve, tmp_path):
    inputs, outputs = classifier_reference()
    bundle = make_bundle(tmp_path / "bundle", ort_web_dir, classifier(), inputs, outputs, {"probs": LABELS})
    base = serve(bundle)
    page = browser.new_page(viewport={"width": 960, "height": 900})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(base + "/web/index.html")
    page.wait_for_function("() => document.body.dataset.status !== 'loading'", timeout=120_000)
    assert requested and all(url.startswith(base + "/") for url in requested), requested  # no CDN, no fonts
    body = page.locator("body")
    assert body.get_attribute("data-status") == "passed", body.get_attribute("data-error")
    assert body.get_attribute("data-backend") == "wasm"  # no GPU adapter in headless Chromium here
    assert page.text_content("#verdict") == "PASS"
    assert page.text_content("#backend") == "wasm"
    assert "not used:" in page.text_content("#fallback")  # why WebGPU was not used is shown
    assert re.fullmatch(r"\d+\.\d\d ms median of 20 runs \(min \d+\.\d\d ms\)", page.text_content("#latency"))
    # COOP/COEP served: isolated, so threads as runner.mjs picks them (hardware threads, at most 4).
    assert page.text_content("#isolated") == "yes"
    expected_threads = page.evaluate("() => Math.min(4, navigator.hardwareConcurrency || 1)")
    assert page.text_content("#threads") == str(expected_threads)
    assert page.text_content("#ortversion") == "1.30.0"
    assert "probs" in page.text_content("#metrics")
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    width, height = png_size(shot.read_bytes())
    assert width == 960 and 400 <= height <= 4000
    # A person's own input (JSON here: no image preprocessing): ranked labels come back.
    page.fill("#json-input", json.dumps({"x": [[0, 0, 0, 0, 0, 0, 0, 0]]}))
    page.click("#json-run")
    page.wait_for_function("() => document.getElementById('own-result').textContent.includes('probs')")
    shown = page.text_content("#own-result")
    assert all(label in shown for label in LABELS)
    page.close()


def test_no_threads_without_cross_origin_isolation(browser, ort_web_dir, serve, tmp_path):
    inputs, outputs = classifier_reference()
    bundle = make_bundle(tmp_path / "bundle", ort_web_dir, classifier(), inputs, outputs)
    page = open_page(browser, serve(bundle, isolate=False) + "/web/index.html?backend=wasm")
    assert page.locator("body").get_attribute("data-status") == "passed"
    assert page.text_content("#isolated").startswith("no")
    assert page.text_content("#threads") == "1"
    page.close()


def test_page_fails_when_outputs_miss_the_tolerance(browser, ort_web_dir, serve, tmp_path):
    inputs, outputs = classifier_reference()
    wrong = {"probs": outputs["probs"][:, ::-1].copy()}  # same values, other order: cosine and elements fail
    bundle = make_bundle(tmp_path / "bundle", ort_web_dir, classifier(), inputs, wrong, {"probs": LABELS})
    page = open_page(browser, serve(bundle) + "/web/index.html?backend=wasm")
    assert page.locator("body").get_attribute("data-status") == "failed"
    assert page.text_content("#verdict") == "FAIL"
    failures = page.text_content("#failures")
    assert "probs: " in failures and "cosine" in failures and "top-1" in failures
    page.close()


def test_page_refuses_reference_it_cannot_read(browser, ort_web_dir, serve, tmp_path):
    inputs, outputs = classifier_reference()
    bundle = make_bundle(tmp_path / "bundle", ort_web_dir, classifier(), inputs, outputs)
    np.savez_compressed(bundle / "reference" / "outputs.npz", **outputs)
    page = open_page(browser, serve(bundle) + "/web/index.html?backend=wasm")
    body = page.locator("body")
    assert body.get_attribute("data-status") == "error"
    assert "reference/outputs.npz: member probs.npy is compressed" in body.get_attribute("data-error")
    page.close()


def identity_model(specs: dict[str, int]) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in specs]
    graph = helper.make_graph(
        nodes, "identity",
        [helper.make_tensor_value_info(name, elem, [2, 3]) for name, elem in specs.items()],
        [helper.make_tensor_value_info(f"{name}_out", elem, [2, 3]) for name, elem in specs.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def encode(value: np.ndarray) -> dict[str, Any]:
    little = value.astype(value.dtype.newbyteorder("<"))
    return {"dtype": value.dtype.name, "shape": list(value.shape), "b64": base64.b64encode(little.tobytes()).decode()}


def decode(encoded: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(encoded["dtype"]).newbyteorder("<")
    return np.frombuffer(base64.b64decode(encoded["b64"]), dtype=dtype).reshape(encoded["shape"])


def open_driver(browser: Any, url: str) -> Any:
    page = browser.new_page()
    page.goto(url + "/web/index.html?driver=1&backend=wasm")
    page.wait_for_function("() => window.gpuxcDriver !== undefined")
    return page


def test_driver_round_trips_tensors_exactly(browser, ort_web_dir, serve, tmp_path):
    feeds = {
        "f32": np.array([[0.1, -0.0, np.inf], [-np.inf, 1e-45, 3.4e38]], dtype=np.float32),
        "f16": np.array([[0.1, -2.5, 65504], [6e-8, -0.0, np.inf]], dtype=np.float16),
        "i64": np.array([[2**62 + 1, -(2**63), 2**63 - 1], [0, -1, 2**53 + 1]], dtype=np.int64),
        "u8": np.array([[0, 1, 127], [128, 254, 255]], dtype=np.uint8),
        "b": np.array([[True, False, True], [False, False, True]]),
    }
    elems = {"f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "i64": TensorProto.INT64,
             "u8": TensorProto.UINT8, "b": TensorProto.BOOL}  # fmt: skip
    outputs = {f"{name}_out": value for name, value in feeds.items()}
    bundle = make_bundle(tmp_path / "bundle", ort_web_dir, identity_model(elems), feeds, outputs)
    page = open_driver(browser, serve(bundle))
    info = page.evaluate("() => window.gpuxcDriver.ready")
    assert info["backend"] == "wasm" and info["ort_version"] == "1.30.0"
    answer = page.evaluate("(encoded) => window.gpuxcDriver.run(encoded)", {k: encode(v) for k, v in feeds.items()})
    for name, value in feeds.items():
        got = decode(answer[f"{name}_out"])
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), name  # bit for bit, -0.0 and inf included
    page.close()
    # The page reads the same dtypes from the reference npz (float16 as raw bits, decoded) and passes.
    page = open_page(browser, serve(bundle) + "/web/index.html?backend=wasm")
    assert page.locator("body").get_attribute("data-status") == "passed", page.text_content("#failures")
    page.close()


def test_unsupported_op_rejects_load_naming_the_op(browser, ort_web_dir, serve, tmp_path):
    # ai.onnx.ml ops are not in ONNX Runtime Web's WASM build.
    node = helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=[0.0], scale=[2.0])
    graph = helper.make_graph([node], "ml", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              ir_version=8)  # fmt: skip
    x = np.ones((1, 3), np.float32)
    bundle = make_bundle(tmp_path / "bundle", ort_web_dir, model, {"x": x}, {"y": 2 * x})
    page = open_driver(browser, serve(bundle))
    message = page.evaluate("() => window.gpuxcDriver.ready.then(() => 'loaded', (e) => e.message)")
    assert "Scaler" in message and "\n" not in message
    assert page.evaluate("() => window.gpuxcDriver.error") == message
    page.close()


@pytest.mark.parametrize("channels", [3, 1])
def test_image_input_reaches_the_model_as_uint8_pixels(browser, ort_web_dir, serve, tmp_path, channels):
    from PIL import Image

    pixels = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    image = tmp_path / "pixels.png"
    Image.fromarray(pixels, "RGB").save(image)
    dims = [1, "h", "w", channels]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["seen"])], "pixels",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, dims)],
                              [helper.make_tensor_value_info("seen", TensorProto.UINT8, dims)])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    reference = np.zeros((1, 2, 2, channels), np.uint8)
    bundle = make_bundle(tmp_path / "bundle", ort_web_dir, model, {"image": reference}, {"seen": reference})
    manifest = json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))
    manifest["preprocessing"] = {"kind": "image", "input": "image", "channel_count": channels,
                                 "channels": "rgb" if channels == 3 else "gray"}  # fmt: skip
    (bundle / "gpux-bundle.json").write_text(json.dumps(manifest), encoding="utf-8")
    page = open_page(browser, serve(bundle) + "/web/index.html?backend=wasm")
    assert page.locator("body").get_attribute("data-status") == "passed"
    assert page.is_visible("#image-file") and not page.is_visible("#json-input")
    page.set_input_files("#image-file", str(image))
    page.wait_for_function("() => document.getElementById('own-result').textContent.includes('seen')")
    shown = page.text_content("#own-result")
    expected = pixels if channels == 3 else np.asarray(Image.fromarray(pixels, "RGB").convert("L"))
    assert f"seen [1, 2, 2, {channels}] uint8" in shown
    assert "[" + ", ".join(str(v) for v in expected.ravel()) + "]" in shown  # alpha dropped, Pillow's gray
    page.close()
