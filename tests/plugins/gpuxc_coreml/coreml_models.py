"""Small ONNX models the coreml tests translate: one-op graphs and the image-classifier example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[3]


def image_classifier() -> onnx.ModelProto:
    source = ROOT / "examples" / "image-classifier" / "make_model.py"
    spec = importlib.util.spec_from_file_location("make_model", source)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model()


def f32(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def i64(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def op_model(nodes: list, inputs: list, output: str, inits: list | None = None, opset: int = 17) -> onnx.ModelProto:
    """A graph of ``nodes`` with one float output ``output`` of unknown shape (opset 20 needs IR 9)."""
    graph = helper.make_graph(nodes, "ops", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              inits or [])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8 if opset < 20 else 9)
