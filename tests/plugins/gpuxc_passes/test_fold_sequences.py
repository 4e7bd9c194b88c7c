"""``fold-sequences``: sequences with constant positions become the tensors they hold."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.plugins.gpuxc_passes.conftest import apply, ops, rng_inputs, run_model

HEAD = '<ir_version: 8, opset_import: ["" : 17]>\n'
ERASE_INSERT_AT = HEAD + """g (float[2,3] X, float[2,3] Y, float[2,3] Z) => (float[2,3] out, int64 n) {
    e = Constant <value = int64 {-3}> ()
    i = Constant <value = int64 {-1}> ()
    seq1 = SequenceConstruct (X, Y, Z)
    seq2 = SequenceErase (seq1, e)
    seq3 = SequenceInsert (seq2, X, i)
    out = SequenceAt (seq3, i)
    n = SequenceLength (seq3)
}"""


def concat_model(new_axis: int, axis: int) -> onnx.ModelProto:
    return onnx.parser.parse_model(HEAD + f"""g (float[2,3] X, float[2,3] Y) => (float[?,?,?] out) {{
        empty = SequenceEmpty <dtype = 1> ()
        s1 = SequenceInsert (empty, X)
        s2 = SequenceInsert (s1, Y)
        out = ConcatFromSequence <axis = {axis}, new_axis = {new_axis}> (s2)
    }}""")


def test_construct_erase_insert_at_and_length_fold_to_tensors(manager, ctx) -> None:
    source = onnx.parser.parse_model(ERASE_INSERT_AT)
    out, record = apply(manager, ctx, source, "fold-sequences")
    assert record.status == "applied" and record.stats["sequence_ops_replaced"] == 5
    assert not {op for op in ops(out) if op.startswith("Sequence")}
    feeds = rng_inputs(X=(2, 3), Y=(2, 3), Z=(2, 3))
    want, got = run_model(source, feeds), run_model(out, feeds)
    # [X, Y, Z] -> erase -3 -> [Y, Z] -> insert X at -1 -> [Y, X, Z]: at -1 is Z, length 3.
    np.testing.assert_array_equal(got["out"], feeds["Z"])
    np.testing.assert_array_equal(got["out"], want["out"])
    assert int(got["n"]) == int(want["n"]) == 3


@pytest.mark.parametrize(("new_axis", "axis"), [(0, 0), (0, 1), (1, 0), (1, -1)])
def test_concat_from_sequence_becomes_concat(manager, ctx, new_axis: int, axis: int) -> None:
    source = concat_model(new_axis, axis)
    out, record = apply(manager, ctx, source, "fold-sequences")
    assert record.status == "applied" and "ConcatFromSequence" not in ops(out)
    feeds = rng_inputs(X=(2, 3), Y=(2, 3))
    np.testing.assert_array_equal(run_model(out, feeds)["out"], run_model(source, feeds)["out"])


def test_a_position_computed_at_run_time_leaves_the_model_unchanged(manager, ctx) -> None:
    source = onnx.parser.parse_model(HEAD + """g (float[2,3] X, float[2,3] Y, int64 p) => (float[2,3] out) {
        s = SequenceConstruct (X, Y)
        out = SequenceAt (s, p)
    }""")
    out, record = apply(manager, ctx, source, "fold-sequences", required=False)
    assert record.status == "unchanged" and out is source
    assert "position computed at run time" in record.stats["reason"]


def test_a_sequence_graph_output_leaves_the_model_unchanged(manager, ctx) -> None:
    source = onnx.parser.parse_model(HEAD + """g (float[2,3] X) => (seq(float[2,3]) s) {
        s = SequenceConstruct (X, X)
    }""")
    out, record = apply(manager, ctx, source, "fold-sequences", required=False)
    assert record.status == "unchanged" and "graph output" in record.stats["reason"]
