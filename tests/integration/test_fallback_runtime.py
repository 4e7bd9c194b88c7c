"""Fallback variants at run time (runner/variants.py): the first variant that cannot run here (its
runtime missing, or broken on purpose) is skipped with the reason, and the fallback serves correct
results and says so. Real bundles from `gpuxc compile --fallback`, real ONNX Runtime and OpenVINO."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import (
    assert_one_error_line,
    break_weights,
    imported_runner,
    ort_run,
    run_cmd,
    running_server,
)

EXIT_SELF_CHECK = 5
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


def _image(seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _compile(project: Path, target: str, fallback: list[str], out: Path) -> Path:
    yml = project / "gpux.yml"
    original = yml.read_text(encoding="utf-8")
    try:
        yml.write_text(original + "build:\n  fallback: [" + ", ".join(fallback) + "]\n", encoding="utf-8")
        [result] = compile_project(project, [target], out, use_cache=False)
    finally:
        yml.write_text(original, encoding="utf-8")
    return result.path


@pytest.fixture(scope="module")
def cpu_then_openvino(shared_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    project = tmp_path_factory.mktemp("fb") / "project"
    shutil.copytree(shared_project, project)
    return _compile(project, "cpu", ["openvino"], tmp_path_factory.mktemp("fb-dist"))


@pytest.fixture
def broken_primary(cpu_then_openvino: Path, tmp_path: Path) -> Path:
    """The cpu variant computes garbage (its weights replaced, the bundle re-signed); openvino is intact."""
    bundle = tmp_path / cpu_then_openvino.name
    shutil.copytree(cpu_then_openvino, bundle)
    break_weights(bundle)
    return bundle


def hide_openvino(folder: Path) -> dict[str, str]:
    """An environment in which ``import openvino`` fails, as on a host without it."""
    (folder / "openvino").mkdir(parents=True, exist_ok=True)
    (folder / "openvino" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'openvino' (hidden by the test)\")\n", encoding="utf-8")
    return {"PYTHONPATH": str(folder)}


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_bundle_serves_from_its_cpu_fallback(shared_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(shared_project, project)
    bundle = _compile(project, "tensorrt", ["cpu"], tmp_path / "dist")
    image = _image()
    expected = ort_run(shared_project / "model.onnx", {"image": image})["logits"]
    with running_server(sys.executable, bundle, tmp_path) as base:
        reply = httpx.post(f"{base}/predict", json={"image": image.tolist()}, timeout=30)
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(np.asarray(reply.json()["logits"]), expected, rtol=1e-4, atol=1e-5)
        info = httpx.get(f"{base}/info", timeout=10).json()
    assert info["variant"]["target"] == "cpu" and info["path"] == "variants/cpu/model.onnx"
    [skipped] = info["skipped_variants"]
    assert skipped["target"] == "tensorrt" and skipped["stage"] == "runtime"
    assert skipped["reason"].startswith("runtime missing: No module named 'tensorrt'")
    # cpu passed at compile time: the default policy (unverified) does not re-check it.
    assert info["self_check"]["status"] == "not needed"
    log = next(tmp_path.glob("server-*.log")).read_text(encoding="utf-8")
    assert "gpuxc: variant tensorrt skipped: runtime missing" in log and "serving variant cpu" in log


@needs_openvino
def test_broken_first_variant_is_skipped_and_the_fallback_serves(broken_primary: Path, shared_project: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("GPUXC_SELF_CHECK", "always")
    image = _image()
    with imported_runner(broken_primary) as runner, \
            TestClient(runner.server.create_app(bundle_dir=broken_primary)) as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/health")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.status_code == 200 and health.json()["variant"] == "openvino", health.json()
        info = client.get("/info").json()
        [skipped] = info["skipped_variants"]
        assert skipped["target"] == "cpu" and skipped["stage"] == "self-check"
        assert skipped["reason"].startswith("self-check failed: logits: ")
        assert info["variant"]["target"] == "openvino" and info["self_check"]["status"] == "passed"
        assert info["self_check"]["provider"] == "CPU" and info["self_check"]["runtime"].startswith("openvino ")
        reply = client.post("/predict", json={"image": image.tolist()})
        assert reply.status_code == 200, reply.text
    expected = ort_run(shared_project / "model.onnx", {"image": image})["logits"]
    np.testing.assert_allclose(np.asarray(reply.json()["logits"]), expected, rtol=1e-3, atol=1e-4)


@needs_openvino
def test_a_missing_runtime_is_skipped_with_the_reason(cpu_then_openvino: Path, tmp_path: Path) -> None:
    bundle = tmp_path / cpu_then_openvino.name
    shutil.copytree(cpu_then_openvino, bundle)
    break_weights(bundle)  # cpu fails its self-check, openvino's runtime is missing: nothing runs
    proc = run_cmd([sys.executable, bundle, "run", "--self-check", "always", "--input",
                    json.dumps({"image": _image().tolist()})], cwd=tmp_path,
                   env=hide_openvino(tmp_path / "hidden"))  # fmt: skip
    assert proc.returncode == EXIT_SELF_CHECK, (proc.stdout, proc.stderr)
    line = assert_one_error_line(proc.stderr, contains=["no variant can run here", "cpu: self-check failed: logits:",
                                                        "openvino: runtime missing: No module named 'openvino'"])
    assert line.index("cpu:") < line.index("openvino:")  # in the bundle's order


@needs_openvino
def test_the_fallback_runs_when_the_primary_s_runtime_is_missing(shared_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(shared_project, project)
    bundle = _compile(project, "openvino", ["cpu"], tmp_path / "dist")
    image = _image(11)
    proc = run_cmd([sys.executable, bundle, "run", "--json", "--input", json.dumps({"image": image.tolist()})],
                   cwd=tmp_path, env=hide_openvino(tmp_path / "hidden"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "gpuxc: variant openvino skipped: runtime missing: No module named 'openvino'" in proc.stderr
    expected = ort_run(shared_project / "model.onnx", {"image": image})["logits"]
    np.testing.assert_allclose(np.asarray(json.loads(proc.stdout)["logits"]), expected, rtol=1e-4, atol=1e-5)
    info = run_cmd([sys.executable, bundle, "info"], cwd=tmp_path, env=hide_openvino(tmp_path / "hidden"))
    assert json.loads(info.stdout)["variant"]["target"] == "cpu"

