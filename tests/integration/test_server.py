"""The bundle's HTTP server, started for real (``python <bundle> serve``, uvicorn) and spoken to
over loopback. Client mistakes are 4xx with ``{"error", "message", "details"}``, never a traceback
or a file path."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import (
    SHARED_LABELS,
    endless_loop_model,
    ort_run,
    run_cmd,
    running_server,
    write_project,
)

PATH_RE = re.compile(r"(?<![\w.])/(?:tmp|home|root|usr|opt|var|private|Users)/")


@pytest.fixture(scope="module")
def server(shared_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One running server for this module; always terminated at the end."""
    with running_server(sys.executable, shared_bundle, tmp_path_factory.mktemp("server-cwd")) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


def _clean(response: httpx.Response, shared_bundle: Path) -> httpx.Response:
    """No traceback and no host path in any response body."""
    text = response.text
    assert "Traceback" not in text
    assert 'File "' not in text
    for path in {
        str(shared_bundle),
        str(shared_bundle.resolve()),
        str(Path.home()),
        tempfile.gettempdir(),
        sys.prefix,
        os.getcwd(),
    }:
        assert path not in text, f"{path} leaked into {text[:300]!r}"
    assert PATH_RE.search(text) is None, text[:300]
    assert ".py" not in text
    return response


def _client_error(response: httpx.Response, status: int, error: str, shared_bundle: Path) -> dict[str, Any]:
    _clean(response, shared_bundle)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "details"}
    assert body["error"] == error
    assert isinstance(body["message"], str) and body["message"]
    return body


def _image(seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)


def test_health(client: httpx.Client, shared_bundle: Path) -> None:
    reply = _clean(client.get("/health"), shared_bundle)
    assert reply.status_code == 200
    assert reply.json() == {
        "status": "healthy",
        "model": "shared-cnn",
        "version": "2.0.0",
        "target": "cpu",
        "variant": "cpu",  # the variant running (a --fallback bundle may run a later one)
        "self_check": "not needed",  # verified at compile time; serving.self_check: unverified
    }


def test_predict_matches_the_runtime(
    client: httpx.Client, shared_bundle: Path, shared_project: Path, tmp_path: Path
) -> None:
    image = _image()
    reply = _clean(client.post("/predict", json={"image": image.tolist()}), shared_bundle)
    assert reply.status_code == 200, reply.text
    served = reply.json()
    # The labelled output ranked beside the raw tensor: all 4 labels (top_k 5 > 4), best first.
    assert list(served) == ["logits", "ranked"]
    [row] = served["ranked"]["logits"]
    order = np.argsort(-np.asarray(served["logits"][0]), kind="stable")
    assert [entry["label"] for entry in row] == [SHARED_LABELS[i] for i in order]
    assert [entry["score"] for entry in row] == [served["logits"][0][i] for i in order]
    # The same bundle's runtime, through its CLI: identical numbers.
    np.savez(tmp_path / "in.npz", image=image)
    proc = run_cmd([sys.executable, shared_bundle, "run", "--input", tmp_path / "in.npz"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert served == json.loads(proc.stdout)
    # And ONNX Runtime on the source model, within the fp32 tolerance.
    expected = ort_run(shared_project / "model.onnx", {"image": image})["logits"]
    np.testing.assert_allclose(np.asarray(served["logits"], np.float32), expected, rtol=1e-4, atol=1e-5)


def test_predict_accepts_gpux_inputs_wrapper(client: httpx.Client, shared_bundle: Path) -> None:
    image = _image(6).tolist()
    plain = client.post("/predict", json={"image": image})
    wrapped = _clean(client.post("/predict", json={"inputs": {"image": image}}), shared_bundle)
    assert wrapped.status_code == 200, wrapped.text
    assert wrapped.json() == plain.json()


def test_info(client: httpx.Client, shared_bundle: Path) -> None:
    reply = _clean(client.get("/info"), shared_bundle)
    assert reply.status_code == 200
    info = reply.json()
    assert (info["name"], info["version"], info["target"], info["format"]) == (
        "shared-cnn",
        "2.0.0",
        "cpu",
        "onnx",
    )
    assert [(t["name"], t["type"], t["shape"]) for t in info["inputs"]] == [("image", "float32", ["N", 3, 32, 32])]
    assert [(t["name"], t["labels"]) for t in info["outputs"]] == [("logits", SHARED_LABELS)]
    assert info["verification"]["status"] == "passed"


def test_metrics(client: httpx.Client, shared_bundle: Path) -> None:
    assert client.post("/predict", json={"image": _image().tolist()}).status_code == 200
    reply = _clean(client.get("/metrics", headers={"Accept": "application/json"}), shared_bundle)
    assert reply.status_code == 200
    metrics = reply.json()
    assert {
        "provider",
        "available_providers",
        "requests",
        "inferences",
        "avg_inference_ms",
        "uptime_s",
    } <= set(metrics)
    assert metrics["provider"]["name"] == "CPUExecutionProvider"
    assert "CPUExecutionProvider" in metrics["available_providers"]
    assert metrics["inferences"] >= 1
    assert metrics["avg_inference_ms"] > 0
    counts = {(r["endpoint"], r["status"]): r["count"] for r in metrics["requests"]}
    assert counts[("/predict", 200)] >= 1
    assert counts[("/health", 200)] >= 1


def test_metrics_count_client_errors(client: httpx.Client, shared_bundle: Path) -> None:
    def bad_count() -> int:
        return sum(
            r["count"]
            for r in client.get("/metrics", headers={"Accept": "application/json"}).json()["requests"]
            if r["endpoint"] == "/predict" and r["status"] == 400
        )

    before = bad_count()
    assert client.post("/predict", json={"nope": [1]}).status_code == 400
    assert bad_count() == before + 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"nope": [1.0]}, "unknown input 'nope'"),
        ({}, "missing input 'image'"),
        ({"image": [[[["a", "b"]]]]}, "expected float32"),
        ({"image": [[1.0, 2.0]]}, "expected rank 4"),
        ({"image": np.zeros((1, 3, 16, 16)).tolist()}, "dim 2 must be 32"),
        ({"image": [[1.0], [1.0, 2.0]]}, "image"),
    ],
    ids=["unknown-name", "missing-name", "wrong-dtype", "wrong-rank", "wrong-dim", "ragged"],
)
def test_predict_bad_input_is_400(
    client: httpx.Client, shared_bundle: Path, body: dict[str, Any], message: str
) -> None:
    reply = client.post("/predict", json=body)
    error = _client_error(reply, 400, "invalid_input", shared_bundle)
    assert message in error["message"]


def test_predict_invalid_json_is_400(client: httpx.Client, shared_bundle: Path) -> None:
    reply = client.post("/predict", content=b'{"image": [1, 2', headers={"content-type": "application/json"})
    _client_error(reply, 400, "invalid_json", shared_bundle)


def test_predict_non_object_json_is_400(client: httpx.Client, shared_bundle: Path) -> None:
    reply = client.post("/predict", json=[1, 2, 3])
    _client_error(reply, 400, "invalid_input", shared_bundle)


def test_predict_text_plain_is_415(client: httpx.Client, shared_bundle: Path) -> None:
    body = json.dumps({"image": _image().tolist()}).encode()
    reply = client.post("/predict", content=body, headers={"content-type": "text/plain"})
    _client_error(reply, 415, "unsupported_media_type", shared_bundle)


@pytest.fixture(scope="module")
def max_body_bytes(shared_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> int:
    """The cap the server enforces: serving.max_body_bytes in the manifest (default 64 MiB)."""
    cap = json.loads((shared_bundle / "gpux-bundle.json").read_text())["serving"]["max_body_bytes"]
    assert cap == 64 * 1024 * 1024
    return int(cap)


def test_body_over_the_cap_streamed_in_chunks_is_413(
    client: httpx.Client, shared_bundle: Path, max_body_bytes: int
) -> None:
    chunk = b" " * (1 << 20)

    def body() -> Iterator[bytes]:  # no Content-Length: the server must count as it reads
        sent = 0
        while sent < max_body_bytes:
            piece = chunk[: max_body_bytes - sent]
            sent += len(piece)
            yield piece
        yield b" "  # one byte over

    reply = client.post("/predict", content=body(), headers={"content-type": "application/json"})
    assert "content-length" not in reply.request.headers
    _client_error(reply, 413, "payload_too_large", shared_bundle)


def test_body_at_the_cap_is_read(client: httpx.Client, shared_bundle: Path, max_body_bytes: int) -> None:
    """Control for the 413 tests: a body of exactly the cap is read and parsed (JSON padded with
    spaces)."""
    payload = json.dumps({"image": _image().tolist()}).encode()
    body = payload + b" " * (max_body_bytes - len(payload))
    reply = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert _clean(reply, shared_bundle).status_code == 200, reply.text[:300]


def test_declared_length_over_the_cap_is_413(client: httpx.Client, shared_bundle: Path, max_body_bytes: int) -> None:
    body = b" " * (max_body_bytes + 1)
    reply = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert reply.request.headers["content-length"] == str(max_body_bytes + 1)
    _client_error(reply, 413, "payload_too_large", shared_bundle)


def test_server_still_serves_after_client_errors(client: httpx.Client, shared_bundle: Path) -> None:
    client.post("/predict", content=b"{", headers={"content-type": "application/json"})
    client.post("/predict", json={"image": "x"})
    reply = _clean(client.post("/predict", json={"image": _image().tolist()}), shared_bundle)
    assert reply.status_code == 200


def test_predict_accepts_json_with_a_charset(client: httpx.Client, shared_bundle: Path) -> None:
    body = json.dumps({"image": _image().tolist()}).encode()
    reply = client.post("/predict", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert _clean(reply, shared_bundle).status_code == 200, reply.text


def test_runtime_timeout_is_504_and_the_server_keeps_serving(tmp_path: Path) -> None:
    """An inference that can only end by runtime.timeout (a Loop of 2**62 steps) answers 504."""
    project = write_project(tmp_path / "p", endless_loop_model(), {"runtime": {"timeout": 0.5}}, name="endless")
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    with (
        running_server(sys.executable, result.path, tmp_path) as base,
        httpx.Client(base_url=base, timeout=120) as c,
    ):
        reply = c.post("/predict", json={"steps": 2**62, "x": [0, 0, 0, 0]})
        body = _client_error(reply, 504, "timeout", result.path)
        assert "did not finish" in body["message"]
        small = c.post("/predict", json={"steps": 3, "x": [1, 1, 1, 1]})
        assert small.status_code == 200, small.text
        assert small.json() == {"y": [4.0, 4.0, 4.0, 4.0]}
