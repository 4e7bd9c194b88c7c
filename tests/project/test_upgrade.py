"""Old models made current: opset < 7 upgraded (with the PRelu repair), IR 3 initializer-inputs dropped."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import models
from gpuxc.errors import ModelError
from gpuxc.project.upgrade import UPGRADE_OPSET, converted_ops, needs_upgrade, upgrade


def run(model: onnx.ModelProto, **feeds: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def opset6_add_broadcast() -> onnx.ModelProto:
    """``Add-6`` with the legacy ``broadcast``/``axis`` attributes: ONNX Runtime has no kernel for it."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1)],
        "g",
        # IR 3: the initializer is listed among the inputs too, as old exporters wrote it.
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
        initializer=[numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)


def opset6_prelu(slope_as_initializer: bool = True) -> onnx.ModelProto:
    slope = np.array([0.1, 0.2, 0.3], np.float32)
    nodes = [helper.make_node("PRelu", ["x", "s"], ["y"], name="prelu")]
    initializers = [numpy_helper.from_array(slope, "s")]
    if not slope_as_initializer:
        nodes.insert(0, helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(slope)))
        initializers = []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])]
    if slope_as_initializer:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [3]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 3])],
                              initializer=initializers)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)


def test_a_current_model_is_left_alone() -> None:
    model = models.tiny_cnn()
    assert not needs_upgrade(model)
    same, record = upgrade(model, "model.onnx")
    assert same is model and record is None


def test_opset6_add_with_axis_broadcast_is_upgraded_and_runs_right() -> None:
    source = opset6_add_broadcast()
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        run(source, x=np.zeros((2, 3, 4), np.float32))  # why the upgrade exists
    current, record = upgrade(source, "model.onnx")
    assert record is not None and (record.from_opset, record.to_opset) == (6, UPGRADE_OPSET)
    assert record.converted_ops == ["Add"] and record.to_ir >= 8 and record.initializer_inputs_dropped == 1
    assert source.opset_import[0].version == 6  # the caller's proto is not modified
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run(current, x=x), x + np.array([1, 2, 3], np.float32).reshape(3, 1))


def test_per_channel_prelu_slope_is_repaired() -> None:
    x = -np.ones((1, 3, 3), np.float32)
    per_channel = x * np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1)
    plain = onnx.version_converter.convert_version(opset6_prelu(), UPGRADE_OPSET)
    assert not np.allclose(run(plain, x=x), per_channel)  # the converter alone broadcasts on the last axis
    current, record = upgrade(opset6_prelu(), "model.onnx")
    assert record is not None and len(record.repairs) == 1 and "PRelu slope 's'" in record.repairs[0]
    np.testing.assert_allclose(run(current, x=x), per_channel)


def test_prelu_slope_from_a_constant_node_is_left_to_verification() -> None:
    # Not repaired (only initializer slopes are): the compile's verification against the source
    # catches the difference and names the op (tests/integration/test_old_models.py).
    current, record = upgrade(opset6_prelu(slope_as_initializer=False), "model.onnx")
    assert record is not None and record.repairs == [] and "PRelu" in record.converted_ops


def test_ir3_initializer_inputs_are_dropped_without_an_opset_change() -> None:
    source = models.legacy_initializer_inputs()
    current, record = upgrade(source, "model.onnx")
    assert record is not None
    assert (record.from_opset, record.initializer_inputs_dropped, record.from_ir) == (None, 1, 3)
    assert [v.name for v in current.graph.input] == ["x"] and current.ir_version >= 4
    assert "1 initializer(s) dropped" in record.summary()
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(run(current, x=x), run(source, x=x))


def test_converted_ops_are_those_whose_definition_changed() -> None:
    model = onnx.parser.parse_model(
        '<ir_version: 3, opset_import: ["" : 6]>\ng (float[2] x) => (float[2] y) { t = Relu(x)\n y = Add(t, t) }'
    )
    assert converted_ops(model, 6, 17) == ["Add", "Relu"]  # Relu-6 -> Relu-14, Add-6 -> Add-14
    assert converted_ops(model, 14, 17) == []


@pytest.mark.parametrize(
    ("op", "named"),
    [("ImageScaler", "op ImageScaler x1 has no definition at opset 17"), ("Upsample", "op Upsample (opset 6 -> 7)")],
)
def test_converter_failures_are_one_line_naming_the_op(op: str, named: str) -> None:
    model = onnx.parser.parse_model(
        f'<ir_version: 3, opset_import: ["" : 6]>\ng (float[1,2,4,4] x) => (float[1,2,4,4] y) {{ y = {op}(x) }}'
    )
    with pytest.raises(ModelError) as info:
        upgrade(model, "old.onnx")
    message = info.value.message
    assert message.startswith("old.onnx: cannot upgrade opset 6 to 17") and named in message
    assert "\n" not in message and "%s" not in message


def test_axis_broadcast_of_an_input_gets_an_unsqueeze() -> None:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "b"], ["y"], name="scale", broadcast=1, axis=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
    )  # fmt: skip
    current, record = upgrade(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3), "m")
    assert record is not None and record.repairs == [
        "Mul 'scale': broadcast from axis 1 made right-aligned (1 trailing unit dim(s) on 'b')"
    ]
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    b = np.array([2.0, 3.0, 4.0], np.float32)
    np.testing.assert_allclose(run(current, x=x, b=b), x * b.reshape(3, 1))
