"""gpuxc/project/nesting.py: subgraph depth read off the wire format, whatever protobuf says."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from gpuxc.project.nesting import PROTOBUF_DEPTH_LIMIT, message_depth
from tests.project.test_hostile_models import nested_ifs


def _if_model(levels: int) -> onnx.ModelProto:
    """A real, checkable model: ``levels`` Ifs nested in each other's then-branch."""
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    leaf = helper.make_graph([helper.make_node("Constant", [], ["y"], value_float=1.0)], "leaf", [], [out])
    graph = leaf
    for i in range(levels):
        node = helper.make_node("If", ["c"], ["y"], then_branch=graph, else_branch=leaf, name=f"if{i}")
        graph = helper.make_graph([node], f"g{i}", [], [out])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    main = helper.make_graph(list(graph.node), "main", [cond], [out])
    return helper.make_model(main, opset_imports=[helper.make_opsetid("", 17)])


def test_depth_grows_three_levels_per_subgraph() -> None:
    one, three = (message_depth(_if_model(n).SerializeToString()) for n in (1, 3))
    assert one is not None and three is not None and three - one == 6  # graph, node, attribute per level


def test_a_bomb_past_protobufs_limit_is_measured() -> None:
    depth = message_depth(nested_ifs(1000))
    assert depth is not None and depth > PROTOBUF_DEPTH_LIMIT


def test_bytes_that_are_not_protobuf_give_none() -> None:
    assert message_depth(b"\x0a\xff\xff\xff\xff\x0f") is None  # a length past the end
    assert message_depth(b"\x0f") is None  # wire type 7 does not exist
