"""Checks before building a web bundle (plugins/gpuxc_web/checks.py): refused, or recorded with node names."""

from __future__ import annotations

import numpy as np
import pytest
from gpuxc_web.checks import MAX_MODEL_BYTES, WEBGPU_BUFFER_BYTES, check_model
from onnx import TensorProto, helper, numpy_helper

from gpuxc.errors import CompileError
from gpuxc.project.model import infer_shapes


def int64_model():  # type: ignore[no-untyped-def]
    """x float -> Cast to int64 -> Add int64 -> Cast back: two int64-computing nodes, a Shape (not counted)."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64, name="to_int"),
        helper.make_node("Add", ["xi", "one"], ["yi"], name="add_int"),
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Cast", ["yi"], ["y"], to=TensorProto.FLOAT, name="to_float"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("s", TensorProto.INT64, [1])],
                              [numpy_helper.from_array(np.array([1], np.int64), "one")])  # fmt: skip
    return infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_int64_nodes_are_named_for_webgpu() -> None:
    checks = check_model(int64_model(), 100, {"x": "float32", "y": "float32"})
    assert checks.int64_nodes == 2
    assert "to_int, add_int" in checks.warnings[0] and "shape" not in checks.warnings[0]


def test_too_large_for_a_browser_is_refused() -> None:
    with pytest.raises(CompileError, match="at most 2 GiB"):
        check_model(int64_model(), MAX_MODEL_BYTES + 1, {})


def test_string_tensors_are_refused_by_name() -> None:
    with pytest.raises(CompileError, match="strings: 'label' \\(string\\)"):
        check_model(int64_model(), 100, {"x": "float32", "label": "string"})


def test_weights_over_webgpus_buffer_limit_are_named() -> None:
    model = int64_model()
    big = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[WEBGPU_BUFFER_BYTES // 4 + 1])
    model.graph.initializer.append(big)  # dims only: the check reads sizes, not data
    checks = check_model(model, 100, {})
    assert checks.large_initializers == ["huge"] and "128 MiB" in checks.warnings[-1]
