"""The built-in pass library: simplify, fold-constants, fp16, quantize-dynamic, quantize-static, ort-format.

Each pass does its job on a small model built in code, keeps the outputs close to the
input model's (gpuxc.compare), and survives the exotic graphs of fixtures.models: applied
with outputs still correct, or skipped with the reason recorded, never a crash; required,
a failure is a PassError naming the pass.
"""

from __future__ import annotations

import ast
import inspect
import logging
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import models
from gpuxc.bundle.compare import DEFAULT_TOLERANCE, compare
from gpuxc.errors import PassError
from gpuxc.ort_session import run_onnxruntime
from gpuxc.passes import PassContext, PassManager, PassRecord, PassSpec
from gpuxc.plugin import get_registry
from gpuxc.project.graph import iter_nodes

REPO = Path(__file__).resolve().parents[2]
NEW_PASSES = ["simplify", "fold-constants", "fp16", "quantize-dynamic", "quantize-static", "ort-format"]


@pytest.fixture
def ctx(tmp_path: Path) -> PassContext:
    work = tmp_path / "work"
    work.mkdir()
    return PassContext(workdir=work, target="cpu", model_dir=tmp_path, project_dir=tmp_path)


@pytest.fixture
def manager() -> PassManager:
    return PassManager(get_registry())


def run_model(model: onnx.ModelProto | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    source = model if isinstance(model, Path) else model.SerializeToString()
    return run_onnxruntime(source, inputs, level="none")


def assert_close(source: onnx.ModelProto, result: onnx.ModelProto | Path, inputs: dict[str, np.ndarray],
                 precision: str) -> dict:  # fmt: skip
    report = compare(run_model(source, inputs), run_model(result, inputs), DEFAULT_TOLERANCE[precision])
    assert report["status"] == "passed", report["failures"]
    return report


def ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in iter_nodes(model.graph))


def apply(manager: PassManager, ctx: PassContext, model: onnx.ModelProto, name: str, params: dict | None = None,
          required: bool = True) -> tuple[onnx.ModelProto, PassRecord]:  # fmt: skip
    out, [record] = manager.run(model, [PassSpec(name, params or {}, required=required)], ctx)
    return out, record


def rng_inputs(**shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def model_of(nodes: list, inputs: list, outputs: list, initializers: list | None = None,
             check: bool = True) -> onnx.ModelProto:  # fmt: skip
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def f32(name: str, shape: list | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weights(*shape: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def redundant_shape_model() -> onnx.ModelProto:
    """``x[2, 8] -> Reshape(x, [-1, dim1(x)]) -> MatMul(W)``: the Shape/Gather/Concat chain is constant."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["d1"], axis=0),
        helper.make_node("Unsqueeze", ["d1", "zero"], ["d1u"]),
        helper.make_node("Concat", ["minus_one", "d1u"], ["new_shape"], axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(weights(8, 4), "W"),
    ]
    return model_of(nodes, [f32("x", [2, 8])], [f32("y", [2, 4])], inits)


def dynamic_rank_model() -> onnx.ModelProto:
    """``x`` of unknown rank (no shape at all) -> MatMul(W[4, 3]) + b -> Relu."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(weights(4, 3), "W"), numpy_helper.from_array(np.full(3, 0.1, np.float32), "b")]
    # The ONNX checker wants a shape on main-graph inputs and outputs; ONNX Runtime does not, and
    # exporters do write such models: this one is built unchecked on purpose.
    return model_of(nodes, [f32("x", None)], [f32("y", None)], inits, check=False)


def unknown_dims_model() -> onnx.ModelProto:
    """``x[?, ?]`` (rank 2, no dim known) -> Identity -> MatMul(W[5, 3]): only width 5 works, which no
    default gives (the Identity is there for simplifiers to remove)."""
    nodes = [helper.make_node("Identity", ["x"], ["x1"]), helper.make_node("MatMul", ["x1", "W"], ["y"])]
    return model_of(
        nodes, [f32("x", [None, None])], [f32("y", [None, 3])], [numpy_helper.from_array(weights(5, 3), "W")]
    )


# -- registration and docs ---------------------------------------------------------------------


def test_every_pass_is_registered_with_a_documented_config() -> None:
    registry = get_registry()
    for name in NEW_PASSES:
        cls = registry.pass_(name)
        assert cls.description
        source = textwrap.dedent(inspect.getsource(cls.Config))
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        fields = [s.target.id for s in body if isinstance(s, ast.AnnAssign)]
        assert fields == list(cls.Config.model_fields), name
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign):
                doc = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), f"{name}.{stmt.target.id}"


def test_docs_name_every_pass_and_parameter() -> None:
    text = (REPO / "docs" / "passes.md").read_text(encoding="utf-8")
    for name, cls in get_registry().passes.items():
        if cls.__module__.startswith("gpuxc_passes"):
            assert f"`{name}`" in text, name
            for field in cls.Config.model_fields:
                assert f"`{field}`" in text, f"{name}.{field}"


def test_importing_the_passes_imports_no_heavy_library() -> None:
    import subprocess

    code = "import sys, gpuxc_passes; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('onnxruntime', 'onnxsim', 'onnxslim', 'onnxconverter_common')))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- simplify ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxsim", "onnxslim"])
def test_simplify_folds_a_redundant_shape_computation(manager, ctx, backend: str) -> None:
    source = redundant_shape_model()
    out, record = apply(manager, ctx, source, "simplify", {"backend": backend})
    assert record.status == "applied"
    assert record.stats["backend"] == backend
    assert {"Shape", "Gather", "Concat"} <= set(record.stats["ops_removed"])
    assert record.stats["nodes_after"] < record.stats["nodes_before"] == 6
    assert "Shape" not in ops(out)
    assert record.stats["check"]["status"] == "passed"
    assert_close(source, out, rng_inputs(x=(2, 8)), "fp32")


def test_simplify_without_the_backend_is_skipped_with_an_install_hint(manager, ctx, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # import onnxsim -> ImportError
    source = models.mlp()
    out, record = apply(manager, ctx, source, "simplify")
    assert record.status == "skipped"
    assert "onnxsim is not installed" in record.reason and "pip install onnxsim" in record.reason
    assert out is source


def test_simplify_with_onnxsim_skips_models_over_2gb(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.simplify

    monkeypatch.setattr(gpuxc_passes.simplify, "is_large", lambda model: True)
    _, record = apply(manager, ctx, models.mlp(), "simplify")
    assert record.status == "skipped"
    assert record.reason.startswith("onnxsim cannot simplify a model over 2 GB (protobuf limit)")


def test_simplify_result_that_differs_is_refused(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.simplify

    def wrong(module, backend, model):
        broken = onnx.ModelProto()
        broken.CopyFrom(model)
        next(n for n in broken.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
        return broken

    monkeypatch.setattr(gpuxc_passes.simplify, "_simplify", wrong)
    source = models.mlp()
    out, record = apply(manager, ctx, source, "simplify", required=False)
    assert record.status == "skipped"
    assert record.reason.startswith("the onnxsim result differs from the input model: probs: ")
    assert out is source
    with pytest.raises(PassError, match=r"^pass 'simplify' failed: the onnxsim result differs"):
        apply(manager, ctx, source, "simplify")


def test_simplifier_exception_fails_the_pass(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.simplify

    def boom(module, backend, model):
        raise RuntimeError("cannot fold\nsecond line")

    monkeypatch.setattr(gpuxc_passes.simplify, "_simplify", boom)
    with pytest.raises(PassError, match=r"^pass 'simplify' failed: onnxslim failed: RuntimeError: cannot fold$"):
        apply(manager, ctx, models.mlp(), "simplify", {"backend": "onnxslim"})


@pytest.mark.parametrize("backend", ["onnxsim", "onnxslim"])
def test_simplify_check_needs_shapes_the_defaults_cannot_guess(manager, ctx, backend: str) -> None:
    source = unknown_dims_model()
    _, record = apply(manager, ctx, source, "simplify", {"backend": backend}, required=False)
    assert record.status == "skipped"
    assert record.reason.startswith("the input model does not run on generated inputs {'x': [1, 4]} (ONNX Runtime")
    assert record.reason.endswith("give the input shapes with the pass parameter 'check_shapes'")
    out, record = apply(manager, ctx, source, "simplify", {"backend": backend, "check_shapes": {"x": [2, 5]}})
    assert record.stats["check"]["shapes"] == {"x": [2, 5]}
    assert_close(source, out, rng_inputs(x=(2, 5)), "fp32")


def test_simplify_leaves_an_already_simple_model_unchanged(manager, ctx) -> None:
    source = models.mlp()
    out, record = apply(manager, ctx, source, "simplify")
    assert record.status == "unchanged"
    assert out is source


# -- fold-constants ----------------------------------------------------------------------------


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


# -- fp16 --------------------------------------------------------------------------------------


def io_types(model: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]


def test_fp16_makes_weights_float16_and_keeps_fp32_io(manager, ctx) -> None:
    source = models.tiny_cnn()
    out, record = apply(manager, ctx, source, "fp16")
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.FLOAT16}
    assert io_types(out) == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert record.stats["float16_tensors"] == len(source.graph.initializer)
    assert record.stats["check"]["status"] == "passed"
    assert_close(source, out, rng_inputs(image=(2, 3, 32, 32)), "fp16")


def test_fp16_without_keep_io_types_takes_float16_io(manager, ctx) -> None:
    out, _ = apply(manager, ctx, models.mlp(), "fp16", {"keep_io_types": False})
    assert io_types(out) == [TensorProto.FLOAT16, TensorProto.FLOAT16]
    x = rng_inputs(x=(2, 8))["x"]
    assert run_model(out, {"x": x.astype(np.float16)})["probs"].dtype == np.float16


def test_fp16_corrects_casts_to_float(manager, ctx) -> None:
    source = models.int64_text_model()  # Cast(attention_mask -> float)
    out, record = apply(manager, ctx, source, "fp16")
    assert record.stats["casts_fixed"] == 1
    cast = next(n for n in out.graph.node if n.name == "mask_cast")
    assert cast.attribute[0].i == TensorProto.FLOAT16
    ids = np.array([[1, 5, 7, 49]], np.int64)
    assert_close(source, out, {"input_ids": ids, "attention_mask": np.ones_like(ids)}, "fp16")


def test_fp16_types_values_after_ml_ops_from_onnxruntime(manager, ctx) -> None:
    source = models.ml_domain()  # ONNX shape inference types nothing after Normalizer/LinearRegressor
    out, record = apply(manager, ctx, source, "fp16")
    assert record.stats["types_from_onnxruntime"] == 2
    assert {n.op_type for n in out.graph.node if n.domain == "ai.onnx.ml"} == {"Normalizer", "LinearRegressor"}
    assert_close(source, out, rng_inputs(x=(3, 4)), "fp16")


def test_fp16_on_ir3_initializer_inputs(manager, ctx) -> None:
    source = models.legacy_initializer_inputs()
    out, record = apply(manager, ctx, source, "fp16")
    assert record.stats["initializer_inputs_dropped"] == ["W"]
    assert [v.name for v in out.graph.input] == ["x"] and out.ir_version == 4
    assert_close(source, out, rng_inputs(x=(1, 4)), "fp16")


def test_fp16_keeps_control_flow_in_float32(manager, ctx) -> None:
    source = models.with_if()
    out, record = apply(manager, ctx, source, "fp16")
    assert record.status == "applied"
    for cond in (True, False):
        assert_close(source, out, {"cond": np.array(cond), "x": np.array([1.0, -2.0, 3.0], np.float32)}, "fp16")
    _, record = apply(manager, ctx, source, "fp16", {"block_control_flow": False}, required=False)
    assert record.status == "skipped"  # the converter alone breaks the outer-scope read of x
    assert record.reason.startswith("the float16 model does not run in ONNX Runtime CPU: ")


def test_fp16_counts_clamped_constants_without_leaking_warnings(manager, ctx) -> None:
    w = weights(8, 4)
    w[0, 0], w[0, 1] = 1e-9, 3e4  # below min_positive_val, above max_finite_val
    source = model_of([helper.make_node("MatMul", ["x", "W"], ["y"])], [f32("x", [1, 8])], [f32("y", [1, 4])],
                      [numpy_helper.from_array(w, "W")])  # fmt: skip
    _, record = apply(manager, ctx, source, "fp16")  # filterwarnings=error: a leaked warning would fail it
    assert record.stats["tensors_clamped"] == 2


def test_fp16_skips_models_without_float32(manager, ctx) -> None:
    ints = model_of([helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_tensor_value_info("a", 7, [2])],
                    [helper.make_tensor_value_info("b", 7, [2])])  # fmt: skip
    _, record = apply(manager, ctx, ints, "fp16")
    assert (record.status, record.reason) == ("skipped", "no float32 weights or computation to convert")
    _, record = apply(manager, ctx, models.zipmap_classifier(), "fp16")  # every op is in the block list
    assert record.reason == "every float32 op is in op_block_list/node_block_list: nothing to convert"


def test_fp16_default_block_list_is_onnxconverters() -> None:
    from gpuxc_passes.fp16 import Fp16Config
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

    assert Fp16Config().op_block_list == list(DEFAULT_OP_BLOCK_LIST)


# -- quantize-dynamic --------------------------------------------------------------------------


def test_quantize_dynamic_makes_int8_matmul_weights(manager, ctx) -> None:
    source = models.mlp()
    out, record = apply(manager, ctx, source, "quantize-dynamic")
    assert record.stats["nodes_quantized"] == 2 and record.stats["candidates"] == 2
    found = ops(out)
    assert found["DynamicQuantizeLinear"] == 2 and found["MatMulInteger"] == 2 and found["Gemm"] == 0  # mlp: 2 Gemm
    int8 = {t.name: list(t.dims) for t in out.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) > 1}
    assert int8 == {"W1_quantized": [8, 16], "W2_quantized": [16, 3]}
    x = np.random.default_rng(3).standard_normal((16, 8)).astype(np.float32)
    assert_close(source, out, {"x": x}, "int8")


def test_quantize_dynamic_leaves_conv_alone_by_default(manager, ctx) -> None:
    out, record = apply(manager, ctx, models.tiny_cnn(), "quantize-dynamic")
    assert record.stats["nodes_quantized"] == 1  # the Gemm head
    assert ops(out)["Conv"] == 1 and "ConvInteger" not in ops(out)
    out, _ = apply(manager, ctx, models.tiny_cnn(), "quantize-dynamic", {"op_types": ["Conv"]})
    assert ops(out)["ConvInteger"] == 1


@pytest.mark.parametrize(("per_channel", "scales"), [(True, 16), (False, 1)])
def test_quantize_dynamic_per_channel_reaches_onnxruntime(manager, ctx, per_channel: bool, scales: int) -> None:
    out, _ = apply(manager, ctx, models.mlp(), "quantize-dynamic", {"per_channel": per_channel})
    scale = next(t for t in out.graph.initializer if t.name == "W1_scale")
    assert int(np.prod(scale.dims)) == scales


def test_quantize_dynamic_collects_quantizer_logs(manager, ctx, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        # per_channel: false keeps opset 9 (per-channel would upgrade it to 13), which ORT warns about.
        _, record = apply(manager, ctx, models.legacy_initializer_inputs(), "quantize-dynamic", {"per_channel": False})
    assert any("opset version is 9" in m for m in record.stats["quantizer_messages"])
    assert not any("opset version" in r.getMessage() for r in caplog.records)  # not printed to the console


def test_quantizer_logging_leaves_the_process_logging_alone(manager, ctx, monkeypatch) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh process
    apply(manager, ctx, models.legacy_initializer_inputs(), "quantize-dynamic")  # ORT logs a warning
    assert logging.getLogger().handlers == []  # logging.warning() would have installed a console handler


# -- quantize-static ---------------------------------------------------------------------------


def cnn_calibration(folder: Path, n: int = 8) -> None:
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        np.savez(folder / f"{i:03d}.npz", image=rng.standard_normal((1, 3, 32, 32)).astype(np.float32))


def test_quantize_static_inserts_qdq_calibrated_on_data(manager, ctx) -> None:
    cnn_calibration(ctx.project_dir / "calib")
    source = models.tiny_cnn()
    out, record = apply(manager, ctx, source, "quantize-static", {"data": "calib", "samples": 6})
    found = ops(out)
    assert found["QuantizeLinear"] > 0 and found["DequantizeLinear"] > found["QuantizeLinear"]
    assert record.stats["samples"] == 6 and record.stats["calibration"] == "data: calib"
    assert record.warnings == []
    image = np.random.default_rng(9).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert_close(source, out, {"image": image}, "int8")


def test_quantize_static_qoperator_format(manager, ctx) -> None:
    cnn_calibration(ctx.project_dir / "calib", 2)
    out, _ = apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": str(ctx.project_dir / "calib"),
                                                                        "format": "qoperator"})  # fmt: skip
    assert ops(out)["QLinearConv"] == 1


def test_quantize_static_without_data_says_how_to_give_it(manager, ctx) -> None:
    with pytest.raises(PassError) as info:
        apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"seed": 0})
    assert str(info.value) == (
        "pass 'quantize-static' failed: static quantization needs calibration data: set build.calibration.data to a "
        "folder of .npz/.npy files (one sample each) or one .npz holding N samples per input, or "
        "build.calibration.random: true for a smoke test"
    )


def test_quantize_static_on_random_inputs_warns(manager, ctx) -> None:
    source = models.tiny_cnn()
    out, record = apply(manager, ctx, source, "quantize-static", {"random": True, "samples": 4})
    assert record.status == "applied"
    assert record.warnings == ["calibrated on random inputs: accuracy on real data is unknown"]
    assert record.stats["calibration"].startswith("random (seed 0, shapes {'image': [1, 3, 32, 32]})")
    assert ops(out)["QuantizeLinear"] > 0


def test_quantize_static_refuses_data_and_random_together(manager, ctx) -> None:
    with pytest.raises(PassError, match="bad parameter : Value error, 'data' and 'random: true' exclude each other"):
        apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": "calib", "random": True})


def test_quantize_static_bad_data_names_the_pass_and_the_file(manager, ctx) -> None:
    (ctx.project_dir / "calib").mkdir()
    np.savez(ctx.project_dir / "calib" / "a.npz", image=np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(PassError, match=r"^pass 'quantize-static' failed: 'calib/a.npz': 'image' has shape"):
        apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": "calib"})


def test_quantize_static_preprocess_failure_is_recorded_not_fatal(manager, ctx, monkeypatch) -> None:
    import onnxruntime.quantization.shape_inference as shape_inference

    def broken(*args, **kwargs):
        raise RuntimeError("Incomplete symbolic shape inference")

    monkeypatch.setattr(shape_inference, "quant_pre_process", broken)
    cnn_calibration(ctx.project_dir / "calib", 2)
    out, record = apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": "calib", "preprocess": True})
    assert record.status == "applied"
    assert record.stats["preprocess"] == "failed, went on without it: RuntimeError: Incomplete symbolic shape inference"


def test_quantize_static_retries_without_preprocess_when_quantizing_fails_after_it(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.quantize_static as qs

    real = qs._quantize

    def fails_after_preprocess(src, *args):
        if src.name == "quantize-static-pre.onnx":
            raise ValueError("The truth value of an array is ambiguous")
        return real(src, *args)

    monkeypatch.setattr(qs, "_quantize", fails_after_preprocess)
    cnn_calibration(ctx.project_dir / "calib", 2)
    _, record = apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": "calib", "preprocess": True})
    assert record.status == "applied"
    assert record.stats["preprocess"].startswith("dropped: quantization failed after it (ValueError: The truth")


def test_quantize_static_skips_models_it_cannot_quantize(manager, ctx) -> None:
    _, record = apply(manager, ctx, models.zipmap_classifier(), "quantize-static", {"random": True})
    assert (record.status, record.reason) == (
        "skipped",
        "no node of an op type ONNX Runtime's static quantizer handles",
    )


# -- ort-format --------------------------------------------------------------------------------


def test_ort_format_writes_an_ort_file_onnxruntime_runs(manager, ctx) -> None:
    source = models.tiny_cnn()
    out, record = apply(manager, ctx, source, "ort-format")
    assert out is source and record.status == "unchanged"
    assert set(manager.artifacts) == {"model.ort", "model.required_operators.config"}
    ort_file = manager.artifacts["model.ort"]
    assert ort_file.read_bytes()[4:8] == b"ORTM"  # flatbuffers file identifier of the ORT format
    assert record.stats["ort_bytes"] == ort_file.stat().st_size
    config = manager.artifacts["model.required_operators.config"].read_text(encoding="utf-8")
    assert "ai.onnx;" in config and record.stats["operators"] >= 3
    assert_close(source, ort_file, rng_inputs(image=(2, 3, 32, 32)), "fp32")


def test_ort_format_runtime_style(manager, ctx) -> None:
    _, record = apply(manager, ctx, models.mlp(), "ort-format", {"optimization_style": "Runtime", "level": "basic"})
    assert record.stats["files"]["model.ort"].endswith(".ort") and "runtime_opt" in record.stats["files"]["model.ort"]
    assert manager.artifacts["model.ort"].is_file()


def test_ort_format_skips_models_over_2gb(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.ort_format

    monkeypatch.setattr(gpuxc_passes.ort_format, "is_large", lambda model: True)
    _, record = apply(manager, ctx, models.mlp(), "ort-format")
    assert record.status == "skipped" and "cannot hold a model over 2 GB" in record.reason


def test_ort_format_failure_names_the_tool(manager, ctx) -> None:
    unknown = helper.make_model(
        helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="example.custom")], "custom",
                          [f32("x", [1])], [f32("y", [1])]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)], ir_version=8,
    )  # fmt: skip
    with pytest.raises(PassError, match=r"^pass 'ort-format' failed: convert_onnx_models_to_ort failed: "):
        apply(manager, ctx, unknown, "ort-format")


# -- exotic graphs: never a crash --------------------------------------------------------------


def exotic_models() -> dict[str, tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]]:
    x3 = np.array([0.5, -1.0, 2.0], np.float32)
    return {
        "with_if": (models.with_if(), [{"cond": np.array(c), "x": x3} for c in (True, False)]),
        "constant_weights": (models.constant_weights(), [rng_inputs(x=(1, 8))]),
        "ml_domain": (models.ml_domain(), [rng_inputs(x=(3, 4))]),
        "scalar_input": (models.scalar_input(), [{"scale": np.array(1.5, np.float32), "x": x3.repeat(2)[:4]}]),
        "dynamic_rank": (dynamic_rank_model(), [rng_inputs(x=(2, 4))]),
        "unknown_dims": (unknown_dims_model(), [rng_inputs(x=(2, 5))]),
    }


PASS_CASES = {
    "simplify": ({}, "fp32"),
    "fold-constants": ({}, "fp32"),
    "fp16": ({}, "fp16"),
    "quantize-dynamic": ({}, "int8"),
    "quantize-static": ({"random": True, "samples": 32}, "int8"),
    "ort-format": ({}, "fp32"),
}


@pytest.mark.parametrize("model_name", list(exotic_models()))
@pytest.mark.parametrize("pass_name", list(PASS_CASES))
def test_exotic_graphs_never_crash_a_pass(manager, ctx, pass_name: str, model_name: str) -> None:
    params, precision = PASS_CASES[pass_name]
    source, samples = exotic_models()[model_name]
    out, record = apply(manager, ctx, source, pass_name, params, required=False)
    assert record.status in ("applied", "unchanged", "skipped")
    if record.status != "skipped":
        result = manager.artifacts["model.ort"] if pass_name == "ort-format" else out
        for inputs in samples:
            assert_close(source, result, inputs, precision)
        return
    assert record.reason
    assert out is source
    # Required, the same pass either stays skipped (it does not apply) or fails naming itself.
    try:
        _, again = apply(manager, ctx, source, pass_name, params, required=True)
    except PassError as exc:
        assert str(exc).startswith(f"pass '{pass_name}' failed: ")
    else:
        assert (again.status, again.reason) == ("skipped", record.reason)


def test_per_channel_quantization_upgrades_an_old_opset_to_13(manager, ctx) -> None:
    # ONNX Runtime's quantizer writes per-channel DequantizeLinear (axis) into an opset-9 graph,
    # which its own loader rejects; the pass upgrades the opset first and records it.
    out, record = apply(manager, ctx, models.legacy_initializer_inputs(), "quantize-dynamic")
    assert record.stats["opset_upgraded"] == "9 -> 13"
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == 13
