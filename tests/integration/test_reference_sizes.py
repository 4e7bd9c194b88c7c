"""Reference inputs for models whose unknown dims cannot take the first default size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gpuxc.build.pipeline import compile_project
from gpuxc.errors import ReferenceError_
from gpuxc.project.reference import DEFAULT_DIM


def conv1d_needing_long_input(kernel: int = DEFAULT_DIM * 2 + 1) -> onnx.ModelProto:
    """x[N, 1, L] -> Conv1d with a kernel longer than DEFAULT_DIM: fails at L=DEFAULT_DIM."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 1, kernel)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv1d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, None])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_unknown_dims_fall_back_to_larger_sizes(make_project, tmp_path: Path) -> None:
    project = make_project(conv1d_needing_long_input())
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    manifest = (result.path / "gpux-bundle.json").read_text()
    import json

    length = json.loads(manifest)["reference"]["shapes"]["x"][2]
    assert length > DEFAULT_DIM  # the size that worked is recorded


def test_user_given_shapes_are_never_changed(make_project, tmp_path: Path) -> None:
    # The user pinned L to a size the kernel cannot take: report it, do not "fix" it.
    project = make_project(conv1d_needing_long_input(), {"build": {"shapes": {"x": [1, 1, 8]}}})
    with pytest.raises(ReferenceError_, match=r"x\[1, 1, 8\]"):
        compile_project(project, ["cpu"], tmp_path / "dist")
