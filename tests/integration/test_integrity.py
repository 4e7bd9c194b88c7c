"""Tamper-evident bundles: gpuxc verify --integrity, and the runner refusing at start-up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuxc.errors import ExitCode


def gpuxc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuxc", *args], capture_output=True, text=True)


@pytest.fixture
def copy(shared_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shared_bundle, tmp_path / "bundle", ignore=shutil.ignore_patterns("__pycache__")))


def test_an_intact_bundle_passes(copy: Path) -> None:
    done = gpuxc("verify", str(copy), "--integrity", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["intact"] is True


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda b: (b / "model" / "model.onnx").write_bytes((b / "model" / "model.onnx").read_bytes()[:-10]),
         "model/model.onnx: contents differ"),
        (lambda b: (b / "runner" / "api.py").write_text("raise SystemExit('owned')\n"),
         "runner/api.py: contents differ"),
        (lambda b: (b / "reference" / "inputs.npz").unlink(), "reference/inputs.npz: missing"),
        (lambda b: (b / "runner" / "extra.py").write_text("x = 1\n"), "runner/extra.py: not in the manifest"),
    ],
)  # fmt: skip
def test_tampering_is_caught_and_named(copy: Path, tamper, expected: str) -> None:  # type: ignore[no-untyped-def]
    tamper(copy)
    done = gpuxc("verify", str(copy), "--integrity")
    assert done.returncode == ExitCode.BUNDLE
    assert expected in done.stderr and done.stderr.count("\n") == 1


def test_the_runner_refuses_a_truncated_model_before_loading_it(copy: Path) -> None:
    model = copy / "model" / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    done = subprocess.run([sys.executable, str(copy), "info"], capture_output=True, text=True)
    assert done.returncode == 3
    assert "integrity check failed" in done.stderr and "model/model.onnx" in done.stderr
    assert "Traceback" not in done.stderr
