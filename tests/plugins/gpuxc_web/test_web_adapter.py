"""The web bundle's adapter (templates/web/runtime.py): static server, Chromium through Playwright, serve.

Browser tests drive the system Chromium on a bundle ``gpuxc compile -t web`` built (its page, its
vendored ONNX Runtime Web); they are skipped only when Chromium or playwright is absent, and the
bundle tests when no ONNX Runtime Web copy is at hand ($GPUXC_ORT_WEB_DIR, gpuxc's cache entry, or
the unpacked package): a test never fetches from the registry.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fixtures import has_module, models
from gpuxc.build.pipeline import compile_project
from gpuxc.targets.timing import adapter_module
from tests.integration.conftest import load_npz, write_project

web = adapter_module("web/runtime.py")
LOCAL_ORT_WEB = Path("/tmp/ortweb/package/dist")


def _has_chromium() -> bool:
    try:
        web.find_chromium()
    except web.BrowserError:
        return False
    return True


browser = pytest.mark.skipif(not (_has_chromium() and has_module("playwright")), reason="needs Chromium and playwright")


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"])
def test_feeds_and_outputs_cross_as_little_endian_base64(dtype: str) -> None:
    value = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    encoded = web.encode(value[:, ::2])  # not contiguous
    assert encoded["dtype"] == dtype and encoded["shape"] == [2, 2, 4]
    back = web.decode(json.loads(json.dumps(encoded)))
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, value[:, ::2])


def test_big_endian_arrays_are_sent_little_endian() -> None:
    value = np.array([1.5, -2.0], dtype=">f4")
    assert web.encode(value)["b64"] == web.encode(value.astype("<f4"))["b64"]
    assert web.encode(value)["dtype"] == "float32"


def test_strings_cannot_cross_to_the_browser() -> None:
    with pytest.raises(ValueError, match="cannot be passed to the browser"):
        web.encode(np.array(["a"]))


def test_backend_is_wasm_unless_webgpu_is_asked_for() -> None:
    assert web.page_backend("auto", strict=False) == "wasm"
    assert web.page_backend("", strict=True) == "wasm"
    assert web.page_backend("WebGPU", strict=True) == "webgpu"
    assert web.page_backend("cuda", strict=False) == "wasm"  # gpux.yml's GPU preference: not a browser backend
    with pytest.raises(ValueError, match="backend 'cuda'"):
        web.page_backend("cuda", strict=True)


def test_chromium_named_by_the_environment_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(web.CHROMIUM_ENV, "/nonexistent/chromium")
    with pytest.raises(web.BrowserError, match=r"GPUXC_CHROMIUM=/nonexistent/chromium: no such executable"):
        web.find_chromium()


def test_no_chromium_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(web.CHROMIUM_ENV, raising=False)
    monkeypatch.setattr(web, "CHROMIUM_NAMES", ("/nonexistent/chromium", "no-such-chromium-browser"))
    with pytest.raises(web.BrowserError, match="no Chromium found .*apt-get install chromium"):
        web.find_chromium()


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    root = tmp_path / "bundle"
    (root / "web" / "ort").mkdir(parents=True)
    (root / "web" / "index.html").write_text("<p>page</p>", encoding="utf-8")
    (root / "web" / "ort" / "x.mjs").write_text("export {};", encoding="utf-8")
    (root / "web" / "ort" / "x.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("outside", encoding="utf-8")
    (root / "web" / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / ".env").write_text("TOKEN=x", encoding="utf-8")
    server = web.StaticServer(root)
    yield root, server
    server.close()


def _get(server: Any, path: str, method: str = "GET") -> http.client.HTTPResponse:
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path)
    response = conn.getresponse()
    response.read()
    return response


def test_files_are_served_cross_origin_isolated_with_their_types(files: tuple[Path, Any]) -> None:
    _, server = files
    for path, content_type in (("/web/index.html", "text/html; charset=utf-8"), ("/web/ort/x.mjs", "text/javascript"),
                               ("/web/ort/x.wasm", "application/wasm"), ("/", "text/html; charset=utf-8")):  # fmt: skip
        response = _get(server, path)
        assert response.status == 200, path
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert _get(server, "/web/ort/x.wasm", "HEAD").headers["Content-Length"] == "4"


@pytest.mark.parametrize("path", ["/web/", "/web", "/web/../../secret.txt", "/web/%2e%2e/%2e%2e/secret.txt",
                                  "/..%2fsecret.txt", "/web/link.txt", "/web/missing.js", "/.env",
                                  "/%2eenv"])  # fmt: skip
def test_no_listing_and_nothing_outside_the_bundle(files: tuple[Path, Any], path: str) -> None:
    _, server = files
    response = _get(server, path)
    assert response.status == 404
    assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"


# -- in Chromium ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A web bundle of a model with float32 and int32 inputs and an int64 output, as gpuxc builds it."""
    from gpuxc_web.ortweb import ORT_WEB_DIR_ENV

    before = os.environ.get(ORT_WEB_DIR_ENV)
    if not before:
        if not LOCAL_ORT_WEB.is_dir():
            pytest.skip(f"no onnxruntime-web 1.30.0: set ${ORT_WEB_DIR_ENV} or run `python -m gpuxc_web.ortweb` once")
        os.environ[ORT_WEB_DIR_ENV] = str(LOCAL_ORT_WEB)
    try:
        root = tmp_path_factory.mktemp("web")
        project = write_project(root / "p", models.multi_io(), name="webio")
        [built] = compile_project(project, ["web"], root / "dist")
    finally:
        if not before:
            del os.environ[ORT_WEB_DIR_ENV]
    yield built.path


@browser
def test_reference_inputs_run_in_chromium_and_match(bundle: Path) -> None:
    adapter = web.Adapter(bundle / "model" / "model.onnx", {}, "auto", ["wasm"], strict=False)
    try:
        inputs = load_npz(bundle / "reference" / "inputs.npz")
        expected = load_npz(bundle / "reference" / "outputs.npz")
        got = adapter.run(inputs, ["sum", "prod", "argmax"], 30.0)
        info = adapter.provider_info()
    finally:
        adapter.close()
    assert got["argmax"].dtype == np.int64 and np.array_equal(got["argmax"], expected["argmax"])
    np.testing.assert_allclose(got["sum"], expected["sum"], rtol=1e-6)
    np.testing.assert_allclose(got["prod"], expected["prod"], rtol=1e-6)
    assert info["name"] == "browser" and info["backend"] == "wasm"
    assert info["runtime"].startswith("Chromium ") and " onnxruntime-web 1." in info["runtime"]
    assert info["runtime"].endswith(" wasm")
    # The server's COOP/COEP made the page cross-origin isolated: WASM threads are possible.
    assert info["cross_origin_isolated"] is True and info["threads"] >= 1


@browser
def test_usable_from_inside_an_event_loop_and_closed_twice(bundle: Path) -> None:
    """Playwright's sync API refuses to run inside a running asyncio loop (a notebook, an async
    server); the adapter keeps Playwright on a loop of its own, so callers may have one."""
    import asyncio

    inputs = load_npz(bundle / "reference" / "inputs.npz")

    async def caller() -> tuple[dict[str, np.ndarray], list[float]]:
        adapter = web.Adapter(bundle / "model" / "model.onnx", {}, "wasm", [], strict=True)
        try:
            return adapter.run(inputs, ["argmax"], 30.0), adapter.time_in_page(inputs, 3, 30.0)
        finally:
            adapter.close()
            adapter.close()

    got, times = asyncio.run(caller())
    assert np.array_equal(got["argmax"], load_npz(bundle / "reference" / "outputs.npz")["argmax"])
    assert len(times) == 3 and all(t >= 0 for t in times)


@browser
def test_bundle_verify_runs_in_the_browser(bundle: Path) -> None:
    proc = subprocess.run([sys.executable, str(bundle), "verify", "--json"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "passed" and report["provider"] == "browser"


@browser
def test_without_chromium_the_bundle_says_so(bundle: Path) -> None:
    proc = subprocess.run([sys.executable, str(bundle), "verify"], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "GPUXC_CHROMIUM": "/nonexistent/chromium"})  # fmt: skip
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        "error: cannot load the model: $GPUXC_CHROMIUM=/nonexistent/chromium: no such executable"]


def _slow_loop() -> onnx.ModelProto:
    """``y = x @ w`` repeated ``n`` times in a Loop: as slow as the caller's ``n`` asks."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_in", "w"], ["x_mm"]), helper.make_node("Tanh", ["x_mm"], ["x_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [256, 256])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [256, 256])],
    )  # fmt: skip
    w = helper.make_tensor("w", TensorProto.FLOAT, [256, 256], np.full(256 * 256, 1e-3, np.float32).tobytes(), raw=True)
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "cond", "x"], ["y"], body=body)], "slow",
        [helper.make_tensor_value_info("n", TensorProto.INT64, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 256])], [w, cond],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _with_model(bundle: Path, dest: Path, model: onnx.ModelProto) -> Path:
    shutil.copytree(bundle, dest)
    onnx.save(model, dest / "model" / "model.onnx")
    return dest / "model" / "model.onnx"


@browser
def test_a_run_past_its_timeout_is_stopped_and_the_next_one_runs(bundle: Path, tmp_path: Path) -> None:
    adapter = web.Adapter(_with_model(bundle, tmp_path / "slow", _slow_loop()), {}, "wasm", [], strict=True)
    x = np.ones((256, 256), np.float32)
    try:
        with pytest.raises(web.InferenceTimeout, match="exceeded the 0.5s timeout"):
            adapter.run({"n": np.array(10**7, np.int64), "x": x}, ["y"], 0.5)
        got = adapter.run({"n": np.array(1, np.int64), "x": x}, ["y"], 60.0)  # a fresh page took over
    finally:
        adapter.close()
    np.testing.assert_allclose(got["y"], np.tanh(x @ np.full((256, 256), 1e-3, np.float32)), rtol=1e-5)


@browser
def test_a_model_the_browser_cannot_load_is_one_line_naming_the_op(bundle: Path, tmp_path: Path) -> None:
    node = helper.make_node("NoSuchOp", ["x"], ["y"])
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(web.BrowserError, match="could not load the model: .*NoSuchOp") as info:
        web.Adapter(_with_model(bundle, tmp_path / "bad", model), {}, "wasm", [], strict=True)
    assert "\n" not in str(info.value)


@browser
def test_a_file_missing_from_web_is_named(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "incomplete"
    shutil.copytree(bundle, copy)
    (copy / "web" / "ort" / "ort.webgpu.min.mjs").unlink()  # the page's module import fails: no driver hook
    with pytest.raises(web.BrowserError, match=r"could not load the model: .*/web/ort/ort.webgpu.min.mjs: HTTP 404"):
        web.Adapter(copy / "model" / "model.onnx", {}, "wasm", [], strict=True)


def test_serve_prints_the_page_url_and_serves_it_isolated(bundle: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(bundle), "serve", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/web/index.html")
        host, port = url.split("/")[2].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/web/index.html")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == (bundle / "web" / "index.html").read_bytes()
        assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        conn.request("GET", "/web/ort/ort-wasm-simd-threaded.asyncify.wasm")
        response = conn.getresponse()
        assert response.status == 200 and response.headers["Content-Type"] == "application/wasm"
        assert response.read()[:4] == b"\0asm"
        conn.request("GET", "/../gpux-bundle.json/../../etc/passwd")
        assert conn.getresponse().status == 404
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_serve_refuses_a_tampered_page(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    (copy / "web" / "index.html").write_text("<script>steal()</script>", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(copy), "serve", "--port", "0"], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.strip() == ("error: bundle integrity check failed: web/index.html: contents differ from "
                                   "the manifest")
