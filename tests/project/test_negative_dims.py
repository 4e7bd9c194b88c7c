"""Exporters that write -1 (paddle2onnx) or '?' for a dynamic dim."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from gpuxc.passes import PassContext, PassManager, PassSpec
from gpuxc.plugin import get_registry
from gpuxc.project.model import load_model


def paddle_style(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, "?", "?"])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 11)], ir_version=7)  # fmt: skip
    # make_tensor_value_info refuses -1, so write it afterwards, as paddle2onnx does.
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def test_minus_one_and_question_mark_dims_are_unknown_not_fixed(tmp_path: Path) -> None:
    sig = load_model(paddle_style(tmp_path)).signature
    assert sig.inputs[0].shape == [None, 3, None, None]


def test_fix_shapes_fills_minus_one_dims(tmp_path: Path) -> None:
    model = onnx.load(paddle_style(tmp_path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    ctx = PassContext(workdir=tmp_path, target="cpu", model_dir=tmp_path)
    out, [record] = PassManager(get_registry()).run(
        model, [PassSpec("fix-shapes", {"shapes": {"x": [1, 3, 8, 8]}})], ctx
    )
    assert record.status == "applied"
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 8]
