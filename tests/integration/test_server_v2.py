"""The Open Inference Protocol (KServe v2) server, with tritonclient as an independent client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.conftest import ort_run, running_server

tritonclient_http = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")
MODEL = "shared-cnn"
VERSION = "2.0.0"


@pytest.fixture(scope="module")
def base_url(shared_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(sys.executable, shared_bundle, tmp_path_factory.mktemp("v2")) as url:
        yield url


@pytest.fixture(scope="module")
def triton(base_url: str):  # type: ignore[no-untyped-def]
    return tritonclient_http.InferenceServerClient(base_url.removeprefix("http://"))


def image(seed: int = 0, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def test_health_and_metadata_through_tritonclient(triton) -> None:  # type: ignore[no-untyped-def]
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL) and triton.is_model_ready(MODEL, VERSION)
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert meta["outputs"][0]["name"] == "logits"


@pytest.mark.parametrize("binary", [True, False])
def test_infer_json_and_binary_match_onnxruntime(triton, shared_project: Path, binary: bool) -> None:  # type: ignore[no-untyped-def]
    x = image(1, batch=2)
    inp = tritonclient_http.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = tritonclient_http.InferRequestedOutput("logits", binary_data=binary)
    result = triton.infer(MODEL, [inp], outputs=[out], model_version=VERSION)
    expected = ort_run(shared_project / "model.onnx", {"image": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-5)


def test_binary_request_by_hand_follows_the_extension(base_url: str) -> None:
    x = image(2)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    reply = httpx.post(f"{base_url}/v2/models/{MODEL}/infer", content=header + x.tobytes(),
                       headers={"Inference-Header-Content-Length": str(len(header)),
                                "Content-Type": "application/octet-stream"})  # fmt: skip
    assert reply.status_code == 200
    size = int(reply.headers["Inference-Header-Content-Length"])
    meta = json.loads(reply.content[:size])
    [logits] = meta["outputs"]
    values = np.frombuffer(reply.content[size:], dtype="<f4").reshape(logits["shape"])
    assert logits["parameters"]["binary_data_size"] == values.nbytes == 4 * 4


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "unexpected input"),
        (
            {"inputs": [{"name": "image", "datatype": "INT64", "shape": [1, 3, 32, 32], "data": [0] * 3072}]},
            "datatype INT64",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 5}]},
            "data elements",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 31, 32], "data": [0.0] * 2976}]},
            "dim 2 must be 32",
        ),
        ({"inputs": []}, "missing input"),
        ({"inputz": []}, "'inputs' list"),
    ],
)
def test_bad_tensors_are_400_with_an_error_body(base_url: str, body: dict, fragment: str) -> None:
    reply = httpx.post(f"{base_url}/v2/models/{MODEL}/infer", json=body)
    assert reply.status_code == 400
    assert fragment in reply.json()["error"] and set(reply.json()) == {"error"}
    assert "Traceback" not in reply.text and "/tmp" not in reply.text


def test_binary_size_mismatch_is_400(base_url: str) -> None:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                     "parameters": {"binary_data_size": 100}}]}).encode()  # fmt: skip
    reply = httpx.post(f"{base_url}/v2/models/{MODEL}/infer", content=header + b"\0" * 100,
                       headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert reply.status_code == 400 and "bytes of data" in reply.json()["error"]


@pytest.mark.parametrize("path", ["/v2/models/other", f"/v2/models/{MODEL}/versions/9", "/v2/models/other/ready"])
def test_unknown_model_or_version_is_404(base_url: str, path: str) -> None:
    reply = httpx.get(base_url + path)
    assert reply.status_code == 404 and reply.json() == {"error": "unknown model or version"}


def test_unknown_model_infer_is_404(base_url: str) -> None:
    assert httpx.post(f"{base_url}/v2/models/other/infer", json={"inputs": []}).status_code == 404


def test_wrong_content_type_is_415(base_url: str) -> None:
    reply = httpx.post(f"{base_url}/v2/models/{MODEL}/infer", content=b"x", headers={"content-type": "text/plain"})
    assert reply.status_code == 415 and "error" in reply.json()


def test_prometheus_metrics_count_requests_by_endpoint_and_status(base_url: str) -> None:
    httpx.post(f"{base_url}/v2/models/{MODEL}/infer", json={"inputs": []})  # one 400
    text = httpx.get(f"{base_url}/metrics").text
    assert 'gpuxc_requests_total{endpoint="/v2/models/infer",status="400"}' in text
    for family in ("gpuxc_request_seconds", "gpuxc_inference_seconds", "gpuxc_queue_seconds", "gpuxc_batch_size",
                   "gpuxc_in_flight"):  # fmt: skip
        assert family in text
    assert httpx.get(f"{base_url}/metrics", headers={"Accept": "application/json"}).json()["inferences"] >= 0


def test_openapi_describes_the_v2_and_gpux_routes(base_url: str) -> None:
    paths = httpx.get(f"{base_url}/openapi.json").json()["paths"]
    expected = [
        "/predict", "/health", "/info", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready",
        "/v2/models/{name}", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
    ]  # fmt: skip
    assert set(expected) <= set(paths)


@pytest.fixture
def keyed_server(shared_bundle: Path, tmp_path: Path) -> Iterator[str]:
    os.environ["GPUXC_API_KEY"] = "s3cret"
    try:
        with running_server(sys.executable, shared_bundle, tmp_path) as url:
            yield url
    finally:
        del os.environ["GPUXC_API_KEY"]


def test_api_key_is_required_except_on_health(keyed_server: str) -> None:
    assert httpx.get(f"{keyed_server}/health").status_code == 200
    assert httpx.get(f"{keyed_server}/v2/health/ready").status_code == 200
    assert httpx.get(f"{keyed_server}/v2/models/{MODEL}").status_code == 401
    assert httpx.get(f"{keyed_server}/info", headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(f"{keyed_server}/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    client = tritonclient_http.InferenceServerClient(keyed_server.removeprefix("http://"))
    x = image(4)
    inp = tritonclient_http.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(MODEL, [inp], headers={"X-API-Key": "s3cret"})
    assert result.as_numpy("logits").shape == (1, 4)


def test_two_workers_each_load_the_model_and_answer(shared_bundle: Path, tmp_path: Path) -> None:
    from tests.integration.conftest import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, str(shared_bundle), "serve", "--port", str(port), "--workers", "2"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{port}")
        x = image(9)
        for _ in range(4):  # requests spread over the worker processes
            inp = tritonclient_http.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            assert client.infer(MODEL, [inp]).as_numpy("logits").shape == (1, 4)
    finally:
        server.terminate()
        server.wait(timeout=30)


ST = Path(sys.executable).parent / "st"


@pytest.mark.skipif(not ST.exists(), reason="schemathesis not installed (pip install schemathesis)")
def test_schemathesis_finds_no_server_error(base_url: str, tmp_path: Path) -> None:
    # Property-based requests from the server's own OpenAPI document: none may get a 5xx.
    done = subprocess.run(
        [str(ST), "run", f"{base_url}/openapi.json", "--checks", "not_a_server_error", "-n", "25",
         "--seed", "1", "--no-color"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
