"""Declared static input shapes specialise the artifact (gpuxc/passes/plans.py: fixed_shapes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.passes.plans import fixed_shapes
from gpuxc.project.config_load import load_config
from gpuxc.project.model import load_model

HEAD = "name: demo\nmodel:\n  source: ./model.onnx\n"


def shapes_of(make_project, config: str) -> dict[str, list[int]]:
    project = make_project(models.mlp(), HEAD + config)  # mlp: x[N, 8] -> y[N, 4]
    loaded = load_config(project / "gpux.yml")
    return fixed_shapes(loaded, load_model(loaded.model_path).signature)


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("[1, 8]", {"x": [1, 8]}),  # static: the artifact is specialised to it
        ("[-1, 8]", {}),  # -1 keeps the batch dim open
        ("[batch, 8]", {}),  # so does a name
        ("[null, 8]", {}),
    ],
)
def test_declared_static_shapes_fix_open_dims(make_project, declared: str, expected: dict) -> None:
    assert shapes_of(make_project, f"inputs:\n  x:\n    shape: {declared}\n") == expected


def test_build_shapes_win_and_batching_keeps_the_first_dim_open(make_project) -> None:
    both = "inputs:\n  x:\n    shape: [1, 8]\nbuild:\n  shapes:\n    x: [4, 8]\n"
    assert shapes_of(make_project, both) == {"x": [4, 8]}
    batching = "inputs:\n  x:\n    shape: [1, 8]\nserving:\n  max_batch_size: 8\n"
    assert shapes_of(make_project, batching) == {}


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_the_bundle_takes_the_declared_shape(make_project, tmp_path: Path, target: str) -> None:
    if target == "openvino":
        pytest.importorskip("openvino")
    project = make_project(models.mlp(), HEAD + "inputs:\n  x:\n    shape: [2, 8]\n")
    [result] = compile_project(project, [target], tmp_path / "dist")
    manifest = json.loads((result.path / "gpux-bundle.json").read_text())
    assert [t["shape"] for t in manifest["inputs"]] == [[2, 8]]
    assert [p["status"] for p in manifest["build"]["passes"] if p["name"] == "fix-shapes"] == ["applied"]
