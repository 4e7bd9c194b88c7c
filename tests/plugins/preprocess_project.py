"""A small image classifier project with a ``preprocessing`` block, compiled per target by the
tests/plugins/*/test_*preprocess*.py tests (every target must compile it with the preprocessing
inside the bundle's model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from gpuxc.build.pipeline import compile_project
from gpuxc.project.preprocess_graph import PREFIX

SIZE = [24, 20]  # [width, height]: not square, so a transposed width/height shows
PREPROCESSING: dict[str, Any] = {"resize": SIZE, "normalize": "imagenet", "resize_mode": "letterbox",
                                 "channels": "bgr", "pad_value": 114}  # fmt: skip
LABELS = ["cat", "dog", "bird", "fish"]


def classifier() -> onnx.ModelProto:
    """pixel_values [batch, 3, 20, 24] -> Conv, Relu, GlobalAveragePool, MatMul, Softmax -> probs [batch, 4]."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "fc")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["pixel_values", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fc"], ["l"], name="fc"),
             helper.make_node("Softmax", ["l"], ["probs"], axis=1, name="softmax")]  # fmt: skip
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                             ["batch", 3, SIZE[1], SIZE[0]])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4])],
                              weights)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_project(folder: Path, build: dict[str, Any] | None = None, **preprocessing: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(classifier(), folder / "model.onnx")
    config = {"name": "pre", "model": {"source": "./model.onnx"},
              "outputs": [{"name": "probs", "labels": LABELS}],
              "preprocessing": {**PREPROCESSING, **preprocessing}} | ({"build": build} if build else {})  # fmt: skip
    (folder / "gpux.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return folder


def compile_target(root: Path, target: str, build: dict[str, Any] | None = None, **preprocessing: Any) -> Path:
    """The bundle of ``target`` for the classifier project (``preprocessing`` overrides the block)."""
    project = write_project(root / "project", build, **preprocessing)
    [result] = compile_project(project, [target], root / "dist")
    return Path(result.path)


def manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))


def preprocessing_nodes(model: onnx.ModelProto) -> list[str]:
    """Op types of the prepended nodes, in graph order."""
    return [n.op_type for n in model.graph.node if n.name.startswith(PREFIX)]


def pixel_input_of(model: onnx.ModelProto) -> tuple[str, int, list[int | str]]:
    [value] = [i for i in model.graph.input if i.name == "image"]
    dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    return value.name, value.type.tensor_type.elem_type, dims
