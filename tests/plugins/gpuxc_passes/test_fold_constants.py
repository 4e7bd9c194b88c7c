"""``fold-constants``: Constant nodes to initializers, constant subgraphs computed once."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fixtures import models
from gpuxc.passes import PassSpec
from gpuxc.project.graph import iter_nodes
from tests.plugins.gpuxc_passes.conftest import (
    apply,
    assert_close,
    f32,
    model_of,
    ops,
    rng_inputs,
    run_model,
    weights,
)


def constant_kinds_model() -> onnx.ModelProto:
    """Every common Constant attribute, each feeding real computation on ``x[2, 3]``."""
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0], np.float32), "sp_values"),
        numpy_helper.from_array(np.array([1], np.int64), "sp_indices"),
        [3],
    )
    nodes = [
        helper.make_node("Constant", [], ["c_value"], value=numpy_helper.from_array(np.array([1, 2, 3], np.float32))),
        helper.make_node("Constant", [], ["c_float"], value_float=0.5),
        helper.make_node("Constant", [], ["c_floats"], value_floats=[0.1, 0.2, 0.3]),
        helper.make_node("Constant", [], ["c_int"], value_int=1),
        helper.make_node("Constant", [], ["c_ints"], value_ints=[0]),
        helper.make_node("Constant", [], ["c_sparse"], sparse_value=sparse),
        helper.make_node("Add", ["x", "c_value"], ["a"]),
        helper.make_node("Mul", ["a", "c_float"], ["b"]),
        helper.make_node("Add", ["b", "c_floats"], ["c"]),
        helper.make_node("Add", ["c", "c_sparse"], ["d"]),
        helper.make_node("Gather", ["d", "c_int"], ["col"], axis=1),
        helper.make_node("Unsqueeze", ["col", "c_ints"], ["y"]),
    ]
    return model_of(nodes, [f32("x", [2, 3])], [f32("y", [1, 2])])


def test_fold_constants_turns_every_constant_kind_into_an_initializer(manager, ctx) -> None:
    source = constant_kinds_model()
    out, record = apply(manager, ctx, source, "fold-constants")
    assert "Constant" not in ops(out)
    assert record.stats["constants_converted"] == 6
    inits = {t.name: t for t in out.graph.initializer}
    assert inits["c_float"].data_type == TensorProto.FLOAT and list(inits["c_float"].dims) == []
    assert inits["c_floats"].data_type == TensorProto.FLOAT and list(inits["c_floats"].dims) == [3]
    assert inits["c_int"].data_type == TensorProto.INT64 and list(inits["c_ints"].dims) == [1]
    assert [s.values.name for s in out.graph.sparse_initializer] == ["c_sparse"]
    inputs = rng_inputs(x=(2, 3))
    np.testing.assert_array_equal(run_model(out, inputs)["y"], run_model(source, inputs)["y"])


def test_fold_constants_computes_constant_subgraphs(manager, ctx) -> None:
    nodes = [
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
        helper.make_node("Mul", ["Wt", "two"], ["W2"]),
        helper.make_node("MatMul", ["x", "W2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(weights(4, 8), "W"), numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    source = model_of(nodes, [f32("x", [1, 8])], [f32("y", [1, 4])], inits)
    out, record = apply(manager, ctx, source, "fold-constants")
    assert [n.op_type for n in out.graph.node] == ["MatMul"]
    assert record.stats["nodes_folded"] == 2 and record.stats["values_folded"] == 1
    assert [t.name for t in out.graph.initializer] == ["W2"]  # W and two were read only by folded nodes
    assert_close(source, out, rng_inputs(x=(1, 8)), "fp32")


def test_fold_constants_keeps_overridable_initializer_inputs(manager, ctx) -> None:
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "Wt"], ["y"])]
    graph = helper.make_graph(nodes, "legacy", [f32("x", [1, 4]), f32("W", [2, 4])], [f32("y", [1, 2])],
                              initializer=[numpy_helper.from_array(weights(2, 4), "W")])  # fmt: skip
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    out, record = apply(manager, ctx, source, "fold-constants")
    assert record.status == "unchanged"  # W is a graph input: a caller may feed another value


def test_fold_constants_raises_ir_3_to_4_when_it_adds_initializers(manager, ctx) -> None:
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2.0], np.float32))),
        helper.make_node("Mul", ["x", "k"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "ir3", [f32("x", [1])], [f32("y", [1])])
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    out, _ = apply(manager, ctx, source, "fold-constants")
    assert out.ir_version == 4  # IR 3 would require 'k' to be a graph input as well
    onnx.checker.check_model(out)


def test_fold_constants_keeps_if_subgraphs_working(manager, ctx) -> None:
    source = models.with_if()
    # A main-graph Constant read from inside both branches (outer scope), plus a foldable chain.
    scale = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(3.0, np.float32)))
    doubled = helper.make_node("Add", ["k", "k"], ["k2"])
    source.graph.node.insert(0, doubled)
    source.graph.node.insert(0, scale)
    for attr in source.graph.node[2].attribute:  # then: x * k2 * k; else: (x - 1) * k
        if attr.name == "then_branch":
            attr.g.node[1].input[1] = "k2"
        attr.g.node.append(helper.make_node("Mul", [attr.g.node[1].output[0], "k"], [f"{attr.name}_scaled"]))
        attr.g.output[0].name = f"{attr.name}_scaled"
    onnx.checker.check_model(source, full_check=True)
    out, record = apply(manager, ctx, source, "fold-constants")
    assert record.stats["constants_converted"] == 1 and record.stats["nodes_folded"] == 1
    assert [n.op_type for n in out.graph.node] == ["If"]
    assert sum(1 for n in iter_nodes(out.graph) if n.op_type == "Constant") == 2  # the branches' own
    x = np.array([1.0, 2.0, 3.0], np.float32)
    for cond in (True, False):
        inputs = {"cond": np.array(cond), "x": x}
        np.testing.assert_array_equal(run_model(out, inputs)["y"], run_model(source, inputs)["y"])


def test_fold_constants_leaves_big_values_computed(manager, ctx) -> None:
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("ReduceSum", ["big", "axes"], ["row"], keepdims=0),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([512, 512], np.int64), "shape"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]  # fmt: skip
    source = model_of(nodes, [f32("x", [512, 512])], [f32("y", [512, 512])], inits)
    out, record = apply(manager, ctx, source, "fold-constants", {"size_limit_mb": 0.5})
    assert record.stats["values_left"] == ["big"]  # 1 MiB computed from 16 bytes: not stored
    assert "ConstantOfShape" in ops(out) and "ReduceSum" not in ops(out)  # the dead branch went away
    out, record = apply(manager, ctx, source, "fold-constants")
    assert "ConstantOfShape" not in ops(out) and record.stats["values_folded"] == 1
    inputs = rng_inputs(x=(512, 512))
    np.testing.assert_array_equal(run_model(out, inputs)["y"], run_model(source, inputs)["y"])


def test_fold_constants_keeps_graph_outputs_computed_by_nodes(manager, ctx) -> None:
    nodes = [
        helper.make_node("Constant", [], ["offset"], value=numpy_helper.from_array(np.array([1.0, 2.0], np.float32))),
        helper.make_node("Neg", ["w"], ["negated"]),
        helper.make_node("Add", ["x", "offset"], ["y"]),
    ]
    outputs = [f32("y", [2]), f32("negated", [2]), f32("offset", [2])]
    w = numpy_helper.from_array(np.array([3.0, 4.0], np.float32), "w")
    source = model_of(nodes, [f32("x", [2])], outputs, [w])
    out, record = apply(manager, ctx, source, "fold-constants")
    # Some runtimes refuse a graph output that is an initializer: those stay node outputs.
    assert [n.op_type for n in out.graph.node] == ["Constant", "Neg", "Add"]
    assert record.status == "unchanged"
    assert run_model(out, {"x": np.zeros(2, np.float32)})["negated"].tolist() == [-3.0, -4.0]


def test_fold_constants_works_on_models_the_onnx_checker_already_refuses(manager, ctx) -> None:
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.full(4, 2.0, np.float32))),
             helper.make_node("Mul", ["x", "k"], ["y"])]  # fmt: skip
    source = model_of(nodes, [f32("x", None)], [f32("y", None)], check=False)  # no shapes: checker says no
    out, record = apply(manager, ctx, source, "fold-constants")
    assert record.status == "applied" and [n.op_type for n in out.graph.node] == ["Mul"]
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(run_model(out, {"x": x})["y"], x * 2)


def test_fold_constants_with_fold_false_only_converts_constants(manager, ctx) -> None:
    source = constant_kinds_model()
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"]), helper.make_node("MatMul", ["x", "Wt"], ["y"])]
    chain = model_of(nodes, [f32("x", [1, 2])], [f32("y", [1, 2])], [numpy_helper.from_array(weights(2, 2), "W")])
    _, record = apply(manager, ctx, chain, "fold-constants", {"fold": False})
    assert record.status == "unchanged"
    out, record = apply(manager, ctx, source, "fold-constants", {"fold": False})
    assert record.stats == {**record.stats, "constants_converted": 6} and "nodes_folded" not in record.stats


def test_fold_constants_then_quantize_dynamic_quantizes_constant_weights(manager, ctx) -> None:
    source = models.constant_weights()
    _, record = apply(manager, ctx, source, "quantize-dynamic")
    assert record.status == "skipped"
    assert record.reason == "no MatMul/Gemm with initializer weights to quantize"
    specs = [PassSpec("fold-constants"), PassSpec("quantize-dynamic")]
    out, [fold, quant] = manager.run(source, specs, ctx)
    assert fold.stats["constants_converted"] == 4 and "Constant" not in ops(out)
    assert quant.status == "applied" and quant.stats["nodes_quantized"] == 2
    assert ops(out)["MatMulInteger"] == 2
    assert_close(source, out, rng_inputs(x=(1, 8)), "int8")
