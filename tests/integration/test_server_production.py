"""The bundle server's production basics, for real: HTTPS with a certificate from trustme's test CA
(``serve --ssl-certfile/--ssl-keyfile``), the access log on stderr (one line per request; no body,
query string or API key), and OpenTelemetry spans of each request in the SDK's in-memory exporter
(a SERVER span named by route template, children decode/queue/run/encode, the caller's traceparent
as parent)."""

from __future__ import annotations

import json
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fixtures.certs import write_test_certs
from tests.integration.conftest import (
    GUARD_S,
    assert_one_error_line,
    free_port,
    imported_runner,
    run_cmd,
    running_server,
    server_log,
)

pytest.importorskip("trustme", reason="test certificates come from trustme (the dev extra)")
API_KEY = "KEY-7f3a-never-logged"
BODY_SECRET = "BODY-SECRET-9c1e"
QUERY_SECRET = "QUERY-SECRET-41d2"
IMAGE = np.random.default_rng(11).standard_normal((1, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], ssl.SSLContext]:
    return write_test_certs(tmp_path_factory.mktemp("certs"))


def _access_lines(log: Path, count: int, marker: str = "/predict") -> list[str]:
    """The access lines naming ``marker``, once ``count`` are there (they follow the response)."""
    deadline = time.monotonic() + GUARD_S
    while True:
        lines = [line for line in log.read_text(encoding="utf-8").splitlines() if marker in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _secret_requests(client: httpx.Client) -> list[int]:
    """A good request, one with a secret in its body, one with the wrong key: their statuses."""
    headers = {"X-API-Key": API_KEY, "X-Request-ID": "req-42"}
    good = client.post(f"/predict?top_k=2&token={QUERY_SECRET}", json={"image": IMAGE.tolist()}, headers=headers)
    secret = client.post("/predict", json={"image": IMAGE.tolist(), "note": BODY_SECRET}, headers=headers)
    refused = client.post("/predict", json={"image": IMAGE.tolist()}, headers={"X-API-Key": "wrong-" + API_KEY})
    return [good.status_code, secret.status_code, refused.status_code]


def _no_secrets(text: str) -> None:
    for secret in (API_KEY, BODY_SECRET, QUERY_SECRET, "top_k", "token="):
        assert secret not in text, f"{secret} in the server's log"


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(shared_bundle: Path, certs: tuple[dict[str, Path], ssl.SSLContext],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:  # fmt: skip
    """HTTPS, JSON access log, an API key."""
    files, client = certs
    cwd = tmp_path_factory.mktemp("tls-server")
    args = ["--ssl-certfile", str(files["cert"]), "--ssl-keyfile", str(files["key"]), "--log-format", "json"]
    with running_server(sys.executable, shared_bundle, cwd, args, env={"GPUXC_API_KEY": API_KEY},
                        verify=client) as base:  # fmt: skip
        yield base, server_log(cwd, base)


def test_https_with_the_ca_trusted(tls_server: tuple[str, Path], certs: tuple[dict[str, Path], ssl.SSLContext]
                                   ) -> None:  # fmt: skip
    base, _ = tls_server
    with httpx.Client(base_url=base, verify=certs[1], timeout=60) as client:
        reply = client.post("/predict", json={"image": IMAGE.tolist()}, headers={"X-API-Key": API_KEY})
        assert reply.status_code == 200, reply.text
        assert np.asarray(reply.json()["logits"]).shape == (1, 4)
        assert client.get("/health").json()["status"] == "healthy"


def test_plain_http_and_untrusting_clients_get_nothing(tls_server: tuple[str, Path]) -> None:
    base, _ = tls_server
    with pytest.raises(httpx.TransportError):
        httpx.get(base.replace("https://", "http://") + "/health", timeout=30)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{base}/health", timeout=30)  # the system's CAs do not know the test CA


def test_json_access_lines_hold_no_body_query_or_key(tls_server: tuple[str, Path],
                                                     certs: tuple[dict[str, Path], ssl.SSLContext]) -> None:
    base, log = tls_server
    before = len(_access_lines(log, 0, '"/predict"'))  # other tests' requests to this server
    with httpx.Client(base_url=base, verify=certs[1], timeout=60) as client:
        statuses = _secret_requests(client)
    assert statuses == [200, 400, 401]
    lines = _access_lines(log, before + 3, '"/predict"')
    assert len(lines) == before + 3, lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["status"] for r in records[-3:]] == statuses
    assert set(records[-1]) == {"time", "client", "method", "path", "status", "bytes", "duration_ms", "request_id"}
    good = records[-3]
    assert (good["method"], good["path"], good["request_id"]) == ("POST", "/predict", "req-42")
    assert good["bytes"] > 0 and good["duration_ms"] > 0 and good["client"].startswith("127.0.0.1:")
    _no_secrets(log.read_text(encoding="utf-8"))


def test_tls_flags_alone_or_with_bad_files_exit_2_before_loading(shared_bundle: Path, tmp_path: Path,
                                                                 certs: tuple[dict[str, Path], ssl.SSLContext]
                                                                 ) -> None:  # fmt: skip
    files = certs[0]
    port = str(free_port())
    for args, contains in (
        (["--ssl-certfile", str(files["cert"])], ["--ssl-keyfile is missing"]),
        (["--ssl-certfile", str(files["cert"]), "--ssl-keyfile", str(tmp_path / "nope.pem")],
         ["cannot read the TLS key file", str(tmp_path / "nope.pem")]),
        (["--ssl-certfile", str(files["junk"]), "--ssl-keyfile", str(files["key"])], [str(files["junk"])]),
        (["--ssl-certfile", str(files["cert"]), "--ssl-keyfile", str(files["other-key"])],
         ["is not the key of the certificate"]),
    ):  # fmt: skip
        proc = run_cmd([sys.executable, shared_bundle, "serve", "--port", port, *args], cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert_one_error_line(proc.stderr, contains=contains)


# -- access log ------------------------------------------------------------------------------------


def test_text_access_lines_replace_uvicorns(shared_bundle: Path, tmp_path: Path) -> None:
    with running_server(sys.executable, shared_bundle, tmp_path, env={"GPUXC_API_KEY": API_KEY}) as base:
        with httpx.Client(base_url=base, timeout=60) as client:
            assert _secret_requests(client) == [200, 400, 401]
        lines = _access_lines(server_log(tmp_path, base), 3)
    assert len(lines) == 3, lines  # one line per request, and no second one from uvicorn
    assert " POST /predict 200 " in lines[0] and lines[0].endswith(" rid=req-42")
    assert " POST /predict 400 " in lines[1] and " POST /predict 401 " in lines[2]
    assert "HTTP/1.1" not in server_log(tmp_path, base).read_text(encoding="utf-8")  # uvicorn's format
    _no_secrets(server_log(tmp_path, base).read_text(encoding="utf-8"))


def test_no_access_log_writes_none(shared_bundle: Path, tmp_path: Path) -> None:
    with running_server(sys.executable, shared_bundle, tmp_path, ["--no-access-log"]) as base:
        assert httpx.post(f"{base}/predict", json={"image": IMAGE.tolist()}, timeout=60).status_code == 200
        assert httpx.get(f"{base}/info", timeout=60).status_code == 200  # after /predict's line would be
        text = server_log(tmp_path, base).read_text(encoding="utf-8")
    assert "/predict" not in text and "/health" not in text


# -- OpenTelemetry ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spans() -> Iterator[Any]:
    """The SDK's in-memory exporter behind the global tracer provider (which is set once per process)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture(scope="module")
def runner(shared_bundle: Path) -> Iterator[Any]:
    with imported_runner(shared_bundle) as package:
        yield package


def _tree(exporter: Any, name: str) -> tuple[Any, list[Any]]:
    """The one SERVER span called ``name`` and its children by start time."""
    from opentelemetry.trace import SpanKind

    finished = exporter.get_finished_spans()
    [server] = [s for s in finished if s.kind == SpanKind.SERVER and s.name == name]
    children = [s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id]
    return server, sorted(children, key=lambda s: s.start_time)


def _served(runner: Any, shared_bundle: Path, batch: int = 1) -> Any:
    from fastapi.testclient import TestClient

    rt = runner.load(shared_bundle)
    rt.manifest.setdefault("serving", {})["max_batch_size"] = batch  # > 1: the dynamic batcher's path
    return TestClient(runner.server.create_app(rt))


@pytest.mark.parametrize("batch", [1, 4])
def test_predict_spans(spans: Any, runner: Any, shared_bundle: Path, batch: int) -> None:
    spans.clear()
    with _served(runner, shared_bundle, batch) as client:
        assert client.post("/predict", json={"image": IMAGE.tolist()}).status_code == 200
    server, children = _tree(spans, "POST /predict")
    assert [c.name for c in children] == ["decode", "queue", "run", "encode"]
    decode, queue, run, encode = children
    assert decode.end_time <= run.start_time <= encode.start_time
    assert queue.end_time == run.start_time  # the run begins where the wait for a worker ends
    assert all(server.start_time <= c.start_time and c.end_time <= server.end_time for c in children)
    attrs = dict(server.attributes)
    assert attrs["gpuxc.model.name"] == "shared-cnn" and attrs["gpuxc.model.version"] == "2.0.0"
    assert attrs["gpuxc.target"] == "cpu" and attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "/predict"
    assert dict(children[2].attributes)["gpuxc.batch_size"] == 1


def test_v2_infer_span_is_named_by_route_and_continues_the_callers_trace(spans: Any, runner: Any,
                                                                        shared_bundle: Path) -> None:
    spans.clear()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32],
                        "data": IMAGE.ravel().tolist()}]}  # fmt: skip
    with _served(runner, shared_bundle) as client:
        reply = client.post("/v2/models/shared-cnn/infer", json=body,
                            headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
        assert reply.status_code == 200, reply.text
        assert client.post("/v2/models/shared-cnn/infer", json={"inputs": []}).status_code == 400
    finished = spans.get_finished_spans()
    named = [s for s in finished if s.name == "POST /v2/models/{name}/infer"]
    assert len(named) == 2 and not any("shared-cnn/infer" in s.name for s in finished)  # never the raw path
    server = next(s for s in named if s.context.trace_id == int(trace_id, 16))
    assert server.parent is not None and server.parent.span_id == int(parent_id, 16) and server.parent.is_remote
    children = sorted((s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id),
                      key=lambda s: s.start_time)  # fmt: skip
    assert [c.name for c in children] == ["decode", "queue", "run", "encode"]
    bad = next(s for s in named if s is not server)
    assert dict(bad.attributes)["http.response.status_code"] == 400
    assert bad.parent is None  # no traceparent: a new trace
