"""The bundle's start-up self-check (runner/selfcheck.py) and the server's readiness gated on it
(runner/readiness.py): real bundles, real ONNX Runtime, a model broken on purpose."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import (
    assert_one_error_line,
    break_weights,
    endless_loop_model,
    free_port,
    imported_runner,
    resign,
    run_cmd,
    write_project,
)

EXIT_SELF_CHECK = 5


@pytest.fixture(scope="module")
def runner_pkg(shared_bundle: Path) -> Iterator[Any]:
    """The runner package (the same files in every bundle), imported in this process."""
    with imported_runner(shared_bundle) as runner:
        yield runner


@pytest.fixture
def broken(bundle_copy: Path) -> Path:
    break_weights(bundle_copy)
    return bundle_copy


def wait_ready(client: TestClient, deadline_s: float = 60.0) -> Any:
    """Poll /health until the background load ends (ready or failed); returns the last response."""
    deadline = time.monotonic() + deadline_s
    while True:
        reply = client.get("/health")
        if reply.status_code == 200 or reply.json()["status"] != "loading" or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def test_self_check_always_passes_and_is_reported(runner_pkg: Any, bundle_copy: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("GPUXC_SELF_CHECK", "always")
    with TestClient(runner_pkg.server.create_app(bundle_dir=bundle_copy)) as client:
        health = wait_ready(client)
        assert health.status_code == 200, health.json()
        assert health.json()["self_check"] == "passed" and health.json()["variant"] == "cpu"
        assert client.get("/v2/health/ready").json() == {"ready": True}
        check = client.get("/info").json()["self_check"]
        assert check["status"] == "passed" and check["policy"] == "always"
        assert check["provider"] == "CPUExecutionProvider" and check["runtime"].startswith("onnxruntime ")
        assert check["seconds"] > 0 and check["outputs"]["logits"]["cosine"] > 0.9999
        assert check["compile_time_status"] == "passed"
        prom = client.get("/metrics").text
        assert 'gpuxc_self_check_passed{provider="CPUExecutionProvider",status="passed",variant="cpu"} 1.0' in prom
        assert "gpuxc_self_check_seconds " in prom
        as_json = client.get("/metrics", headers={"accept": "application/json"}).json()
        assert as_json["ready"] is True and as_json["self_check"]["status"] == "passed"


def test_verified_bundle_skips_the_check_by_default(runner_pkg: Any, shared_bundle: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("GPUXC_SELF_CHECK", raising=False)
    with TestClient(runner_pkg.server.create_app(bundle_dir=shared_bundle)) as client:
        assert wait_ready(client).status_code == 200
        check = client.get("/info").json()["self_check"]
        assert check["status"] == "not needed" and check["policy"] == "unverified"
        assert "serving.self_check: always" in check["reason"]


def test_unverified_bundle_is_checked_by_default(shared_project: Path, tmp_path: Path) -> None:
    # No CUDA here: the cuda bundle is unverified at compile time, and on this host ONNX Runtime
    # runs it on the CPU provider. The self-check runs on what it got, and says which.
    [result] = compile_project(shared_project, ["cuda"], tmp_path / "dist")
    assert result.verification["status"] == "unverified"
    proc = run_cmd([sys.executable, result.path, "info"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    check = json.loads(proc.stdout)["self_check"]
    assert check["status"] == "passed" and check["policy"] == "unverified"
    assert check["compile_time_status"] == "unverified" and check["provider"] == "CPUExecutionProvider"


def test_broken_model_fails_run_with_exit_5(broken: Path, tmp_path: Path) -> None:
    proc = run_cmd([sys.executable, broken, "run", "--self-check", "always", "--input", "{}"], cwd=tmp_path)
    assert proc.returncode == EXIT_SELF_CHECK, (proc.stdout, proc.stderr)
    assert_one_error_line(proc.stderr, contains=["self-check failed", "logits: "])
    # Without the self-check the same bundle runs (and verify reports it failing, exit 1).
    verify = run_cmd([sys.executable, broken, "verify"], cwd=tmp_path)
    assert verify.returncode == 1, verify.stderr


def test_broken_model_server_exits_5_and_never_reports_ready(broken: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.run([sys.executable, str(broken), "serve", "--self-check", "always", "--port", str(port)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == EXIT_SELF_CHECK, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "gpuxc: model not ready: self-check failed: logits: " in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: self-check failed")


def test_broken_model_stays_unready_when_asked(runner_pkg: Any, broken: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("GPUXC_SELF_CHECK", "always")
    app = runner_pkg.server.create_app(stay_unready=True, bundle_dir=broken)
    with TestClient(app) as client:
        health = wait_ready(client)
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "unhealthy" and body["reason"].startswith("self-check failed: logits: ")
        [skipped] = body["skipped_variants"]
        assert skipped["target"] == "cpu" and skipped["stage"] == "self-check"
        assert skipped["self_check"]["outputs"]["logits"]["cosine"] < 0.99  # the metrics, for a person to read
        assert client.get("/v2/health/live").json() == {"live": True}
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert client.get("/v2/models/shared-cnn/ready").status_code == 503
        info = client.get("/info")
        assert info.status_code == 503 and info.json()["status"] == "failed"
        image = np.zeros((1, 3, 32, 32), np.float32)
        predict = client.post("/predict", json={"image": image.tolist()})
        assert predict.status_code == 503 and predict.json()["error"] == "not_ready"
        v2 = client.post("/v2/models/shared-cnn/infer", json={"inputs": [
            {"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": image.ravel().tolist()}]})
        assert v2.status_code == 503 and "not ready" in v2.json()["error"]
        assert client.get("/metrics", headers={"accept": "application/json"}).json()["ready"] is False


def test_self_check_that_hangs_is_bounded_by_runtime_timeout(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", endless_loop_model(), {"runtime": {"timeout": 0.5}}, name="endless")
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    bundle = result.path
    # The reference now asks for 2**62 iterations: only the timeout ends the self-check.
    rel = "reference/inputs.npz"
    with np.load(bundle / rel) as data:
        inputs = {k: data[k] for k in data.files}
    inputs["steps"] = np.array(2**62, np.int64)
    np.savez(bundle / rel, **inputs)
    resign(bundle, rel)
    started = time.monotonic()
    proc = run_cmd([sys.executable, bundle, "run", "--self-check", "always", "--input",
                    json.dumps({"steps": 1, "x": [0, 0, 0, 0]})], cwd=tmp_path)  # fmt: skip
    assert time.monotonic() - started < 60  # a guard, not a timing claim: it would otherwise never end
    assert proc.returncode == EXIT_SELF_CHECK, (proc.stdout, proc.stderr)
    assert_one_error_line(proc.stderr, contains=["self-check timeout", "0.5s timeout"])


def test_unknown_policy_is_one_error_line(bundle_copy: Path, tmp_path: Path) -> None:
    proc = run_cmd([sys.executable, bundle_copy, "run", "--input", "{}"], cwd=tmp_path,
                   env={"GPUXC_SELF_CHECK": "sometimes"})  # fmt: skip
    assert proc.returncode == 3
    assert_one_error_line(proc.stderr, contains=["self-check policy 'sometimes'", "always, unverified, off"])


def test_serving_self_check_reaches_the_manifest(shared_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    shutil.copytree(shared_project, project)
    text = (project / "gpux.yml").read_text(encoding="utf-8")
    (project / "gpux.yml").write_text(text + "serving:\n  self_check: always\n", encoding="utf-8")
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    manifest = json.loads((result.path / "gpux-bundle.json").read_text(encoding="utf-8"))
    assert manifest["serving"]["self_check"] == "always"
    proc = run_cmd([sys.executable, result.path, "info"], cwd=tmp_path)
    assert json.loads(proc.stdout)["self_check"]["status"] == "passed"
