"""The runner's production helpers on their own: TLS settings checked before the server binds
(templates/runner/tls.py, with real certificates from trustme's test CA), access log lines
(access.py) and the tracing module without OpenTelemetry installed (tracing.py). Loaded from the
runner's own files, as gpuxc loads them. The servers themselves: tests/integration/test_server_production.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fixtures.certs import KEY_PASSWORD, write_test_certs
from gpuxc.bundle.runner_source import runner_module, runner_source

pytest.importorskip("trustme", reason="test certificates come from trustme (the dev extra)")
tls = runner_module("tls")
access = runner_module("access")


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {name: str(path) for name, path in write_test_certs(tmp_path_factory.mktemp("pems"))[0].items()}


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tls.CERTFILE_ENV, raising=False)
    monkeypatch.delenv(tls.KEYFILE_ENV, raising=False)


def test_no_tls_is_no_options() -> None:
    assert tls.ssl_options(None, None) == {}


def test_a_valid_pair_becomes_uvicorns_arguments(pems: dict[str, str]) -> None:
    assert tls.ssl_options(pems["cert"], pems["key"]) == {
        "ssl_certfile": pems["cert"], "ssl_keyfile": pems["key"], "ssl_keyfile_password": None}


def test_the_environment_gives_the_files(pems: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tls.CERTFILE_ENV, pems["cert"])
    monkeypatch.setenv(tls.KEYFILE_ENV, pems["key"])
    assert tls.ssl_options(None, None)["ssl_certfile"] == pems["cert"]


def test_an_encrypted_key_reads_its_password_from_the_named_variable(pems: dict[str, str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY_PASSWORD", KEY_PASSWORD)
    options = tls.ssl_options(pems["cert"], pems["encrypted-key"], "KEY_PASSWORD")
    assert options["ssl_keyfile_password"] == KEY_PASSWORD


@pytest.mark.parametrize(("cert", "key", "password", "message"), [
    ("cert", None, None, "--ssl-keyfile is missing"),
    (None, "key", None, "--ssl-certfile is missing"),
    (None, None, "KEY_PASSWORD", "needs --ssl-certfile and --ssl-keyfile"),
    ("missing", "key", None, "cannot read the TLS certificate file {missing}"),
    ("cert", "missing", None, "cannot read the TLS key file {missing}"),
    ("junk", "key", None, "the TLS certificate file {junk} is not a PEM certificate"),
    ("cert", "junk", None, "the TLS key file {junk} is not a PEM key"),
    ("cert", "cert", None, "the TLS key file {cert} is not a PEM key"),
    ("cert", "other-key", None, "the TLS key file {other-key} is not the key of the certificate {cert}"),
    ("cert", "encrypted-key", None, "the TLS key file {encrypted-key} is encrypted"),
    ("cert", "encrypted-key", "KEY_PASSWORD", "cannot decrypt the TLS key file {encrypted-key}"),
    ("cert", "encrypted-key", "UNSET_VARIABLE", "the environment variable UNSET_VARIABLE is not set"),
])  # fmt: skip
def test_unusable_settings_are_one_line_naming_the_file(pems: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                        cert: str | None, key: str | None, password: str | None,
                                                        message: str) -> None:  # fmt: skip
    monkeypatch.setenv("KEY_PASSWORD", "wrong")
    paths = {**pems, "missing": str(Path(pems["cert"]).parent / "missing.pem")}
    with pytest.raises(tls.TLSConfigError) as info:
        tls.ssl_options(paths[cert] if cert else None, paths[key] if key else None, password)
    text = str(info.value)
    assert "\n" not in text
    expected = message
    for name, path in paths.items():
        expected = expected.replace("{" + name + "}", path)
    assert expected in text


def _record(path: str = "/predict", rid: str = "") -> dict[str, object]:
    return {"time": "2026-01-01T00:00:00.000Z", "client": "127.0.0.1:5000", "method": "POST", "path": path,
            "status": 200, "bytes": 42, "duration_ms": 1.25, "request_id": rid}


def test_text_lines_hold_the_fields() -> None:
    line = access.format_line(_record(rid="abc-1"), "text")
    assert line == "2026-01-01T00:00:00.000Z 127.0.0.1:5000 POST /predict 200 42B 1.2ms rid=abc-1"


def test_json_lines_are_one_json_object() -> None:
    assert json.loads(access.format_line(_record(), "json")) == _record()


def test_control_characters_cannot_forge_a_line() -> None:
    # A percent-decoded path (or an X-Request-ID) holding a newline would start a fake log line.
    forged = access.AccessLog._record({"type": "http", "method": "GET", "path": "/a\nPOST /predict 200",
                                       "headers": [(b"x-request-id", b"x\ry" + b"z" * 500)]}, 0.0, 0.0, 404, 0)
    line = access.format_line(forged, "text")
    assert "\n" not in line and "\r" not in line
    assert "/a\\x0aPOST\\x20/predict\\x20200" in line
    assert len(str(forged["request_id"])) == access.MAX_REQUEST_ID + 3  # cut, then \r escaped


def test_the_access_log_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(access.ACCESS_LOG_ENV, raising=False)
    assert access.enabled()
    monkeypatch.setenv(access.ACCESS_LOG_ENV, "0")
    assert not access.enabled()


def _without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """runner/tracing.py loaded afresh where ``import opentelemetry`` fails, as in a bundle's venv."""
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # type: ignore[arg-type]
    spec = importlib.util.spec_from_file_location("_gpuxc_tracing_without_otel", runner_source("tracing"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_opentelemetry_tracing_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    tracing = _without_opentelemetry(monkeypatch)
    assert not tracing.available()
    with tracing.span("decode") as current:
        assert current is None
    assert tracing.span("run") is tracing.span("encode")  # one shared null context: nothing allocated
    tracing.intervals(("queue", 0.0, 1.0, None), ("run", 1.0, 2.0, {tracing.BATCH_SIZE: 1}))
    tracing.annotate({tracing.BATCH_SIZE: 1})
