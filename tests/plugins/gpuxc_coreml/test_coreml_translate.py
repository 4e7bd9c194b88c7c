"""The ONNX → MIL translator: the op coverage table, and translated ops against ONNX Runtime.

coremltools' value inference runs MIL in NumPy, so the numerics are checked on any host.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from gpuxc_coreml.translate import (
    TRANSLATORS,
    build_program,
    describe_unsupported,
    evaluate,
    output_signature,
    signature_mismatches,
    unsupported_ops,
)
from onnx import TensorProto, helper, numpy_helper

from fixtures import models
from tests.plugins.gpuxc_coreml.coreml_models import f32, i64, image_classifier, op_model

DOC = Path(__file__).resolve().parents[3] / "docs" / "targets" / "coreml.md"
needs_coremltools = pytest.mark.skipif(
    importlib.util.find_spec("coremltools") is None, reason="the coreml target needs `pip install gpuxc[coreml]`"
)


def test_every_translated_op_is_in_the_docs_table() -> None:
    table = DOC.read_text(encoding="utf-8").split("## Op coverage", 1)[1]
    listed = set(re.findall(r"^\| (\w+) \|", table, flags=re.MULTILINE))
    assert listed == set(TRANSLATORS), sorted(set(TRANSLATORS) ^ listed)


def test_unsupported_ops_counts_each_op_type() -> None:
    nodes = [helper.make_node("Hardmax", ["x"], ["v"]), helper.make_node("Hardmax", ["x"], ["v2"]),
             helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["x"], ["nz"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, [4])])  # fmt: skip
    missing = unsupported_ops(helper.make_model(graph))
    assert missing == {"Hardmax": 2, "NonZero": 1}
    assert describe_unsupported(missing) == "coreml cannot translate 2 op type(s): Hardmax x2, NonZero x1"


@needs_coremltools
@pytest.mark.parametrize(("name", "shape"), [("cnn", [1, 3, 32, 32]), ("classifier", [1, 3, 64, 64])])
def test_mil_outputs_match_the_onnx_outputs(name: str, shape: list[int]) -> None:
    model = models.tiny_cnn() if name == "cnn" else image_classifier()
    shapes = {"image": shape}
    program = build_program(model, shapes)
    assert signature_mismatches(model, shapes, program) == []
    x = np.zeros(shape, np.float32)
    [expected] = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})
    [(out_name, out_shape, dtype)] = output_signature(program)
    assert (out_name, out_shape, dtype) == (model.graph.output[0].name, expected.shape, "fp32")


CASES = {
    "elementwise": ([helper.make_node("Mul", ["a", "b"], ["m"]), helper.make_node("Sub", ["m", "a"], ["s"]),
                     helper.make_node("Div", ["s", "b"], ["d"]), helper.make_node("Tanh", ["d"], ["t"]),
                     helper.make_node("Erf", ["t"], ["e"]), helper.make_node("Neg", ["e"], ["y"])], []),
    "activations": ([helper.make_node("LeakyRelu", ["a"], ["l"], alpha=0.2),
                     helper.make_node("HardSwish", ["l"], ["h"]), helper.make_node("HardSigmoid", ["h"], ["hs"]),
                     helper.make_node("Clip", ["hs", "lo", "hi"], ["y"])],
                    [helper.make_tensor("lo", TensorProto.FLOAT, [], [0.55]),
                     helper.make_tensor("hi", TensorProto.FLOAT, [], [0.6])]),
    "softmax": ([helper.make_node("LogSoftmax", ["a"], ["ls"], axis=1), helper.make_node("Softmax", ["b"], ["sm"]),
                 helper.make_node("Add", ["ls", "sm"], ["y"])], []),
    "shape-ops": ([helper.make_node("Transpose", ["a"], ["t"], perm=[1, 0]),
                   helper.make_node("Slice", ["t", "st", "en", "ax", "stp"], ["s"]),
                   helper.make_node("Reshape", ["s", "shp"], ["r"]),
                   helper.make_node("Concat", ["r", "r"], ["c"], axis=0),
                   helper.make_node("Unsqueeze", ["c", "ax0"], ["u"]),
                   helper.make_node("Squeeze", ["u", "ax0"], ["y"])],
                  [i64("st", [-1]), i64("en", [-(2**63)]), i64("ax", [0]), i64("stp", [-2]), i64("shp", [0, -1]),
                   i64("ax0", [0])]),
    "gather-reduce-where": ([helper.make_node("Gather", ["a", "idx"], ["g"], axis=1),
                             helper.make_node("ReduceMean", ["g"], ["rm"], axes=[1], keepdims=1),
                             helper.make_node("ReduceSum", ["a", "ax1"], ["rs"], keepdims=1),
                             helper.make_node("Greater", ["rm", "rs"], ["gt"]),
                             helper.make_node("Where", ["gt", "g", "b"], ["y"])],
                            [i64("idx", [3, -1, 0, 2, 1, 4]), i64("ax1", [1])]),
}  # fmt: skip


@needs_coremltools
@pytest.mark.parametrize("case", sorted(CASES))
def test_translated_ops_compute_what_onnx_runtime_computes(case: str) -> None:
    # MIL's value inference runs the translated ops in NumPy: a numerics check without CoreML.
    nodes, inits = CASES[case]
    model = op_model(nodes, [f32("a", [4, 6]), f32("b", [4, 6])], "y", inits)
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((4, 6)).astype(np.float32), "b": rng.random((4, 6)).astype(np.float32) + 0.5}
    [expected] = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = evaluate(model, feeds)["y"]
    assert got is not None, "no value inference for this case"
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


MORE_CASES = {
    "gelu-layernorm": ([helper.make_node("Gelu", ["a"], ["g"]),
                        helper.make_node("LayerNormalization", ["g", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)],
                       [helper.make_tensor("gamma", TensorProto.FLOAT, [6], [1.0, 0.5, 2.0, 1.0, 1.5, 1.0]),
                        helper.make_tensor("beta", TensorProto.FLOAT, [6], [0.0, 0.1, 0.0, -0.2, 0.0, 0.3])]),
    "split-tile-expand-pad": ([helper.make_node("Split", ["a", "sizes"], ["s1", "s2"], axis=1),
                               helper.make_node("Tile", ["s1", "reps"], ["t"]),
                               helper.make_node("Expand", ["s2", "shape"], ["e"]),
                               helper.make_node("Concat", ["t", "e"], ["c"], axis=1),
                               helper.make_node("Pad", ["c", "pads", "pv"], ["y"], mode="constant")],
                              [i64("sizes", [2, 4]), i64("reps", [1, 2]), i64("shape", [4, 4]),
                               i64("pads", [0, 1, 0, 1]), helper.make_tensor("pv", TensorProto.FLOAT, [], [0.5])]),
}  # fmt: skip


@needs_coremltools
@pytest.mark.parametrize("case", sorted(MORE_CASES))
def test_more_translated_ops_compute_what_onnx_runtime_computes(case: str) -> None:
    nodes, inits = MORE_CASES[case]
    model = op_model(nodes, [f32("a", [4, 6])], "y", inits, opset=20)
    feeds = {"a": np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)}
    [expected] = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = evaluate(model, feeds)["y"]
    if got is None:
        # MIL has no value inference for some ops: the static shape is still checked.
        program = build_program(model, {"a": [4, 6]})
        assert output_signature(program)[0][1] == expected.shape
        return
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@needs_coremltools
def test_norm_resize_and_transposed_conv_translate_with_onnx_shapes() -> None:
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "wt"),
        numpy_helper.from_array(np.ones(3, np.float32), "sc"),
        numpy_helper.from_array(np.zeros(3, np.float32), "bi"),
        helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2]),
    ]
    nodes = [helper.make_node("InstanceNormalization", ["x", "sc", "bi"], ["n"]),
             helper.make_node("Resize", ["n", "", "scales"], ["r"], mode="nearest"),
             helper.make_node("ConvTranspose", ["r", "wt"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])]  # fmt: skip
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [f32("x", [1, 3, 8, 8])], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    [expected] = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert signature_mismatches(model, {"x": [1, 3, 8, 8]}, build_program(model, {"x": [1, 3, 8, 8]})) == []
    assert output_signature(build_program(model, {"x": [1, 3, 8, 8]}))[0][1] == expected.shape
