"""More real-model traits through the whole pipeline: external data, opsets 11-18."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project


def test_model_with_external_data_compiles_and_its_bundle_is_self_contained(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    models.save(models.tiny_cnn(), project / "model.onnx", external_data=True)
    assert (project / "weights.bin").is_file()
    (project / "gpux.yml").write_text("name: ext\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    manifest = json.loads((result.path / "gpux-bundle.json").read_text())
    assert manifest["signature"]["external_data"] == ["weights.bin"]
    # The weights travel with the bundle: it still verifies after the project is gone.
    (project / "weights.bin").unlink()
    done = subprocess.run([sys.executable, str(result.path), "verify"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("opset", [11, 13, 15, 18])
def test_opsets_11_to_18_compile_and_verify(make_project, tmp_path: Path, opset: int) -> None:
    project = make_project(models.tiny_cnn(opset=opset))
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    manifest = json.loads((result.path / "gpux-bundle.json").read_text())
    assert manifest["signature"]["opsets"][""] == opset
