"""docs/targets/coreml.md lists every op the coreml translator registry handles (no drift)."""

from __future__ import annotations

import re
from pathlib import Path

from gpuxc_coreml.translate import TRANSLATORS, describe_unsupported, unsupported_ops
from onnx import TensorProto, helper

DOC = Path(__file__).resolve().parents[3] / "docs" / "targets" / "coreml.md"


def test_every_translated_op_is_in_the_docs_table() -> None:
    table = DOC.read_text(encoding="utf-8").split("## Op coverage", 1)[1]
    listed = set(re.findall(r"^\| (\w+) \|", table, flags=re.MULTILINE))
    assert listed == set(TRANSLATORS), sorted(set(TRANSLATORS) ^ listed)


def test_unsupported_ops_counts_each_op_type() -> None:
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"]), helper.make_node("TopK", ["x", "k"], ["v2", "i2"]),
             helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["x"], ["nz"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, [4])])  # fmt: skip
    missing = unsupported_ops(helper.make_model(graph))
    assert missing == {"NonZero": 1, "TopK": 2}
    assert describe_unsupported(missing) == "coreml cannot translate 2 op type(s): NonZero x1, TopK x2"
