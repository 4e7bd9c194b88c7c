"""A bundle needs nothing but its own requirements.txt: checked in ONE fresh venv (session fixture
``bundle_venv``) that holds only those requirements, installed from the package registry."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.conftest import ort_run, run_cmd, running_server


def test_requirements_pin_the_runtime(shared_bundle: Path) -> None:
    lines = [
        ln.strip()
        for ln in (shared_bundle / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {"onnxruntime", "numpy", "fastapi", "uvicorn"} <= names
    assert all("==" in ln for ln in lines), lines
    assert not any(name.startswith("gpuxc") for name in names)


@pytest.mark.network
def test_gpuxc_is_not_importable_in_the_bundle_venv(bundle_venv: Path, tmp_path: Path) -> None:
    proc = run_cmd([bundle_venv, "-c", "import gpuxc"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "No module named 'gpuxc'" in proc.stderr
    # ...while the runtime the bundle needs is there (the failure above is not a broken venv).
    assert run_cmd([bundle_venv, "-c", "import onnxruntime, numpy, fastapi, uvicorn"], cwd=tmp_path).returncode == 0


@pytest.mark.network
def test_verify_passes_in_the_bundle_venv(bundle_venv: Path, shared_bundle: Path, tmp_path: Path) -> None:
    proc = run_cmd([bundle_venv, shared_bundle, "verify"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verification passed" in proc.stdout


@pytest.mark.network
def test_run_in_the_bundle_venv_matches_onnxruntime_on_source(
    bundle_venv: Path, shared_bundle: Path, shared_project: Path, tmp_path: Path
) -> None:
    image = np.random.default_rng(11).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", image=image)
    proc = run_cmd([bundle_venv, shared_bundle, "run", "--input", tmp_path / "in.npz"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = np.asarray(json.loads(proc.stdout)["logits"], dtype=np.float32)
    expected = ort_run(shared_project / "model.onnx", {"image": image})["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.network
def test_serve_starts_in_the_bundle_venv(bundle_venv: Path, shared_bundle: Path, tmp_path: Path) -> None:
    with running_server(bundle_venv, shared_bundle, tmp_path) as base:
        health = httpx.get(f"{base}/health", timeout=30)
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        image = np.zeros((1, 3, 32, 32), np.float32)
        reply = httpx.post(f"{base}/predict", json={"image": image.tolist()}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["logits"][0]) == 4
