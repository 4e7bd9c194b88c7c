"""The reference comes from the source model: ONNX Runtime, else OpenVINO, else onnx.reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gpuxc.errors import ModelError, ReferenceError_
from gpuxc.project.reference_runtime import ONNX_REFERENCE, ONNXRUNTIME, OPENVINO, run_reference

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs gpuxc[openvino]")


def add6(tmp_path: Path, dtype: int = TensorProto.FLOAT, axis: int = 1) -> Path:
    """Opset 6 ``Add`` with the legacy ``broadcast`` attribute: ONNX Runtime has no kernel for it.
    ``b`` is ``[1, 2, 3]`` on axis 1 of ``x[2, 3, 4]``, or ``[1, 2, 3, 4]`` on axis 2 (right-aligned)."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    b = np.arange(1, 4 if axis == 1 else 5).astype(np_dtype)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=axis)],
        "g",
        [helper.make_tensor_value_info("x", dtype, [2, 3, 4]), helper.make_tensor_value_info("b", dtype, b.shape)],
        [helper.make_tensor_value_info("y", dtype, [2, 3, 4])],
        initializer=[numpy_helper.from_array(b, "b")],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3), path)
    return path


def expected(x: np.ndarray) -> np.ndarray:
    return x + np.array([1, 2, 3], x.dtype).reshape(3, 1)


def test_a_model_onnx_runtime_runs_is_its_reference(tmp_path: Path) -> None:
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\ng (float[3] x) => (float[3] y) { y = Relu(x) }'), path)  # fmt: skip
    run = run_reference(path, {"x": np.array([-1, 0, 2], np.float32)}, {"float32"})
    assert run.runtime == ONNXRUNTIME and run.fallbacks == []
    np.testing.assert_array_equal(run.outputs["y"], [0, 0, 2])


@needs_openvino
def test_openvino_runs_what_onnx_runtime_cannot_load(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    run = run_reference(add6(tmp_path), {"x": x}, {"float32"})
    assert run.runtime == OPENVINO
    assert len(run.fallbacks) == 1 and run.fallbacks[0].startswith("onnxruntime: ONNX Runtime cannot load the model")
    assert "NOT_IMPLEMENTED" in run.fallbacks[0]
    np.testing.assert_allclose(run.outputs["y"], expected(x), rtol=1e-6)


def test_float64_goes_to_onnx_reference_and_says_why_not_openvino(tmp_path: Path) -> None:
    # OpenVINO computes float64 in float32 (measured wrong on ONNX's float64 test cases); ONNX's
    # reference implementation knows only right-aligned broadcasting, hence axis 2 here.
    x = np.array([[[1e200, -2.5, 0, 1]] * 3] * 2, np.float64)
    run = run_reference(add6(tmp_path, TensorProto.DOUBLE, axis=2), {"x": x}, {"float64"})
    assert run.runtime == ONNX_REFERENCE
    assert run.fallbacks[1].startswith("openvino: ") and "float64" in run.fallbacks[1]
    np.testing.assert_array_equal(run.outputs["y"], x + np.arange(1, 5))


def test_a_pinned_runtime_is_used_without_trying_the_others(tmp_path: Path) -> None:
    x = np.zeros((2, 3, 4), np.float32)
    run = run_reference(add6(tmp_path, axis=2), {"x": x}, {"float32"}, runtime=ONNX_REFERENCE)
    assert run.runtime == ONNX_REFERENCE and run.fallbacks == []
    np.testing.assert_array_equal(run.outputs["y"], x + np.arange(1, 5))


def test_inputs_onnx_runtime_rejects_are_not_retried_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\ng (float[3] x) => (float[3] y) { y = Relu(x) }'), path)  # fmt: skip
    with pytest.raises(ReferenceError_) as info:
        run_reference(path, {"x": np.zeros(5, np.float32)}, {"float32"})
    assert info.value.message.startswith("ONNX Runtime failed on the reference inputs")
    assert "no other runtime" not in info.value.message


def test_a_model_no_runtime_runs_is_one_error_naming_each(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])  # fmt: skip
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), path)  # fmt: skip
    with pytest.raises(ModelError) as info:
        run_reference(path, {"x": np.zeros(2, np.float32)}, {"float32"})
    message = info.value.message
    assert message.startswith("ONNX Runtime cannot load the model") and "Frobnicate" in message
    assert "no other runtime could run the source either" in message
    assert "onnx.reference:" in message and "\n" not in message


@needs_openvino
def test_an_openvino_reference_is_cross_checked_by_onnx_reference(tmp_path: Path) -> None:
    run = run_reference(add6(tmp_path, axis=2), {"x": np.ones((2, 3, 4), np.float32)}, {"float32"})
    assert run.runtime == OPENVINO and run.cross_check == "onnx.reference agrees"
    # onnx.reference knows no legacy axis broadcast: the check is skipped, and that is recorded.
    run = run_reference(add6(tmp_path, axis=1), {"x": np.ones((2, 3, 4), np.float32)}, {"float32"})
    assert run.runtime == OPENVINO and (run.cross_check or "").startswith("not cross-checked: onnx.reference")


@needs_openvino
def test_openvino_and_onnx_reference_disagreeing_stops_the_build(tmp_path: Path) -> None:
    # GRU with layout=1 (batch first): ONNX Runtime refuses it, and OpenVINO computes it wrong
    # (measured on ONNX's test_gru_batchwise). No reference can be trusted: a clean error.
    rng = np.random.default_rng(0)
    hidden, size = 4, 3
    w = numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, size)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32), "R")
    graph = helper.make_graph(
        [helper.make_node("GRU", ["x", "W", "R"], ["y", "h"], hidden_size=hidden, layout=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, None)], initializer=[w, r],
    )  # fmt: skip
    path = tmp_path / "gru.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]), path)
    with pytest.raises(ReferenceError_) as info:
        run_reference(path, {"x": rng.standard_normal((3, 2, size)).astype(np.float32)}, {"float32"})
    assert info.value.message.startswith("OpenVINO and onnx.reference disagree on the source model's outputs")
