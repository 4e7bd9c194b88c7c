"""The translators added for detector and transformer exports (issue 12), and the constant folding
of shape arithmetic: MIL value inference (NumPy) against ONNX Runtime, one case per op family."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.plugins.gpuxc_coreml.coreml_models import f32, i64

pytest.importorskip("coremltools", reason="the coreml target needs `pip install gpuxc[coreml]`")

from gpuxc_coreml.translate import build_program, evaluate, output_signature  # noqa: E402

node = helper.make_node


def model_of(nodes: list, inputs: list, outputs: list[str], inits: list | None = None,
             opset: int = 18) -> onnx.ModelProto:  # fmt: skip
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(nodes, "ops", inputs, outs, inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def assert_matches_onnx_runtime(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    expected = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = evaluate(model, feeds)
    for out, want in zip(model.graph.output, expected, strict=True):
        value = got[out.name]
        assert value is not None, f"no value inference for {out.name}"
        np.testing.assert_allclose(value, want, rtol=tol, atol=tol, err_msg=out.name)


A = f32("a", [4, 6])
B = f32("b", [4, 6])


def feeds_ab() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"a": rng.standard_normal((4, 6)).astype(np.float32), "b": rng.random((4, 6)).astype(np.float32) + 0.5}


CASES = {
    "variadic-sum-mean-max": ([node("Sum", ["a", "b", "a"], ["s"]), node("Mean", ["a", "b"], ["m"]),
                               node("Max", ["s", "m", "b"], ["y"])], [], ["y"]),
    "trig": ([node("Tanh", ["a"], ["t"]), node("Asin", ["t"], ["as"]), node("Acos", ["t"], ["ac"]),
              node("Atanh", ["t"], ["ath"]), node("Atan", ["a"], ["at"]), node("Sinh", ["b"], ["sh"]),
              node("Cosh", ["b"], ["ch"]), node("Tan", ["t"], ["tn"]),
              node("Sum", ["as", "ac", "ath", "at", "sh", "ch", "tn"], ["y"])], [], ["y"]),
    "activations": ([node("Mish", ["a"], ["mi"]), node("Softsign", ["a"], ["ss"]),
                     node("Selu", ["a"], ["se"], alpha=1.5, gamma=1.1),
                     node("ThresholdedRelu", ["a"], ["tr"], alpha=0.3),
                     node("PRelu", ["a", "slope"], ["pr"]), node("Dropout", ["pr", "ratio"], ["dr"]),
                     node("Sum", ["mi", "ss", "se", "tr", "dr"], ["y"])],
                    [helper.make_tensor("slope", TensorProto.FLOAT, [6], [0.1, 0.2, -0.3, 0.4, 0.0, 2.0]),
                     helper.make_tensor("ratio", TensorProto.FLOAT, [], [0.5])], ["y"]),
    "reductions-axes-input": ([node("ReduceL1", ["a", "ax"], ["l1"], keepdims=1),
                               node("ReduceL2", ["a", "ax"], ["l2"], keepdims=1),
                               node("ReduceLogSumExp", ["a", "ax"], ["lse"], keepdims=1),
                               node("ReduceSumSquare", ["a", "ax"], ["ssq"], keepdims=1),
                               node("ReduceLogSum", ["b", "ax"], ["ls"], keepdims=1),
                               node("ReduceMax", ["a", "ax"], ["mx"], keepdims=1),
                               node("Sum", ["l1", "l2", "lse", "ssq", "ls", "mx"], ["y"])], [i64("ax", [1])], ["y"]),
    "argmax-topk-cumsum-gather-elements": (
        [node("ArgMax", ["a"], ["am"], axis=1), node("ArgMin", ["a"], ["an"], axis=0, keepdims=0),
         node("Cast", ["am"], ["amf"], to=1), node("Cast", ["an"], ["anf"], to=1),
         node("TopK", ["a", "k"], ["tv", "ti"], axis=1), node("Cast", ["ti"], ["tif"], to=1),
         node("CumSum", ["a", "ax"], ["cs"], exclusive=1, reverse=1), node("CumSum", ["b", "ax"], ["ci"]),
         node("GatherElements", ["b", "gidx"], ["ge"], axis=1)],
        [i64("k", [3]), helper.make_tensor("ax", TensorProto.INT64, [], [1]),
         helper.make_tensor("gidx", TensorProto.INT64, [4, 2], [0, -1, 5, 2, -6, 3, 1, 1])],
        ["amf", "anf", "tv", "tif", "cs", "ci", "ge"]),
    "logic-xor-where": ([node("Greater", ["a", "zero"], ["p"]), node("Less", ["b", "one"], ["q"]),
                         node("Xor", ["p", "q"], ["x"]), node("Where", ["x", "a", "b"], ["y"])],
                        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])], ["y"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_new_translators_compute_what_onnx_runtime_computes(case: str) -> None:
    nodes, inits, outputs = CASES[case]
    assert_matches_onnx_runtime(model_of(nodes, [A, B], outputs, inits), feeds_ab(), tol=1e-4)


def test_integer_mod_and_runtime_range() -> None:
    # Mod with fmod=0 follows the divisor's sign (Python's %): MIL mod must agree on negatives.
    ints = [helper.make_tensor_value_info(n, TensorProto.INT32, [6]) for n in ("i", "j")]
    scalars = [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in ("lo", "hi", "step")]
    nodes = [node("Mod", ["i", "j"], ["m"]), node("Cast", ["m"], ["y"], to=1),
             node("Range", ["lo", "hi", "step"], ["r"])]  # fmt: skip
    feeds = {"i": np.array([7, -7, 7, -7, 0, 5], np.int32), "j": np.array([3, 3, -3, -3, 2, 5], np.int32),
             "lo": np.array(-1.5, np.float32), "hi": np.array(2.0, np.float32),
             "step": np.array(0.5, np.float32)}  # fmt: skip
    assert_matches_onnx_runtime(model_of(nodes, ints + scalars, ["y", "r"]), feeds)


def test_shape_arithmetic_folds_in_onnx_semantics() -> None:
    # Shape -> Gather(-1) -> Range(-5, 6, 2) -> Div (int: ONNX truncates -5/2 to -2, MIL's floor_div floors)
    # -> Mod -> Cast -> Hardmax (no translator) -> Add to the input: every step but the Add is folded.
    nodes = [node("Shape", ["a"], ["s"]), node("Gather", ["s", "last"], ["n"], axis=0),
             node("Range", ["minus5", "n", "two"], ["r"]), node("Div", ["r", "two"], ["d"]),
             node("Mod", ["d", "four"], ["m"]), node("Cast", ["m"], ["mf"], to=1),
             node("Hardmax", ["mf"], ["h"], axis=0), node("Add", ["a", "h"], ["y"])]  # fmt: skip
    inits = [helper.make_tensor(n, TensorProto.INT64, [], [v]) for n, v in
             (("last", -1), ("minus5", -5), ("two", 2), ("four", 4))]  # fmt: skip
    model = model_of(nodes, [A], ["y"], inits)
    assert_matches_onnx_runtime(model, {"a": feeds_ab()["a"]})
    program = build_program(model, {"a": [4, 6]})
    ops = {op.op_type for op in program.functions["main"].operations}
    assert ops <= {"const", "add"}, ops  # nothing of the chain is left to run in CoreML
    assert output_signature(program) == [("y", (4, 6), "fp32")]


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_before_opset_13_normalizes_over_the_flattened_trailing_dims(op: str) -> None:
    model = model_of([node(op, ["x"], ["y"], axis=1)], [f32("x", [2, 3, 4])], ["y"], opset=11)
    feeds = {"x": np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)}
    assert_matches_onnx_runtime(model, feeds)
