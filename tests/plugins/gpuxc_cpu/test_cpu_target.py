"""The ``cpu`` target (plugins/gpuxc_cpu): its own options, through the whole pipeline.

What every fixture model does on the cpu target (portable ONNX at EXTENDED, verified) is in
tests/integration/test_compile_models.py; ``--optimize auto`` on it in test_optimize_auto.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from fixtures import models
from gpuxc.build.pipeline import BundleResult, compile_project
from gpuxc.errors import ConfigError
from gpuxc.project.graph import iter_nodes
from tests.integration.conftest import write_project

NCHWC_DOMAIN = "com.microsoft.nchwc"


def manifest_of(result: BundleResult) -> dict[str, Any]:
    return json.loads((result.path / "gpux-bundle.json").read_text(encoding="utf-8"))


def test_host_specific_build_is_what_the_portability_check_catches(tmp_path: Path) -> None:
    """Control for test_compile_models' portability test: level 'all' (host_specific) does emit NCHWc ops here."""
    project = write_project(
        tmp_path / "p",
        models.tiny_cnn(),
        {
            "build": {"optimization_level": "all", "options": {"cpu": {"host_specific": True}}},
        },
    )
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    domains = {n.domain for n in iter_nodes(onnx.load(str(result.path / "model/model.onnx")).graph)}
    if NCHWC_DOMAIN not in domains:
        pytest.skip("this host's ONNX Runtime emits no NCHWc layout ops even at level 'all'")
    assert manifest_of(result)["artifact"]["settings"]["host_specific"] is True


def test_ort_format_option_ships_an_ort_model_that_verifies(make_project, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn(), {"build": {"options": {"cpu": {"ort_format": True}}}})
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    manifest = manifest_of(result)
    assert manifest["artifact"]["entry"] == "model/model.ort" and manifest["artifact"]["format"] == "ort"
    assert result.verification["status"] == "passed"
    files = {f["path"] for f in manifest["files"]}
    assert any(p.endswith(".config") for p in files if p.startswith("model/"))


def test_level_all_needs_host_specific(make_project, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn(), {"build": {"optimization_level": "all"}})
    with pytest.raises(ConfigError, match="host_specific: true"):
        compile_project(project, ["cpu"], tmp_path / "dist")


def test_thread_settings_are_recorded_for_the_runner(make_project, tmp_path: Path) -> None:
    options = {"intra_op_threads": 2, "inter_op_threads": 1, "execution_mode": "parallel"}
    project = make_project(models.mlp(), {"build": {"options": {"cpu": options}}})
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    manifest = manifest_of(result)
    assert manifest["artifact"]["settings"] == {**options, "host_specific": False}
    assert manifest["artifact"]["entry"] == "model/model.onnx" and manifest["artifact"]["format"] == "onnx"
    assert manifest["verification"]["runtime"].endswith(" CPUExecutionProvider")
