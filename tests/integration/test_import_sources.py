"""Nothing is imported from a project, model or output folder: plugins and libraries come only from
the installed environment (entry points), however gpuxc is started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fixtures import models
from tests.integration.conftest import run_cmd

# Modules gpuxc, its plugins or its libraries import during a compile, plus the plugin modules.
SHADOWED = ["onnxruntime", "onnx", "numpy", "jinja2", "yaml", "gpuxc_cpu", "gpuxc_passes", "onnxsim", "pluggy"]


def plant(folder: Path, marker: Path) -> None:
    """A module per name that, if ever imported, leaves a marker file and breaks the build."""
    for name in SHADOWED:
        (folder / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\nraise ImportError('shadow module imported')\n",
            encoding="utf-8",
        )


@pytest.mark.parametrize("launcher", ["script", "python -m"])
def test_compile_imports_nothing_from_the_project_folder(
    make_project, tmp_path: Path, gpuxc_script: Path, launcher: str
) -> None:
    project = make_project(models.mlp())
    marker = tmp_path / "imported.txt"
    plant(project, marker)
    command = [gpuxc_script] if launcher == "script" else [sys.executable, "-m", "gpuxc"]
    proc = run_cmd([*command, "compile", ".", "-t", "cpu", "-o", "dist"], cwd=project,
                   env={"PYTHONPATH": ""})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), f"imported from the project folder: {marker.read_text()}"
    assert (project / "dist" / "demo-0.1.0-cpu").is_dir() or any((project / "dist").iterdir())
