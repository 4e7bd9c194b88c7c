"""``fold-sequences``: tensor sequences whose every position is known become plain tensors.

OpenVINO, CoreML and TensorRT have no tensor-sequence type: a model that builds a sequence
internally (``SequenceConstruct``/``SequenceInsert``/``SequenceErase``, then ``SequenceAt``,
``SequenceLength`` or ``ConcatFromSequence``) fails on them even when its inputs and outputs are
tensors. When every position is a constant (an initializer or a ``Constant`` node), which
tensor each ``SequenceAt`` returns is known at compile time, so the sequence ops can be replaced:
``SequenceAt`` by an ``Identity`` of that tensor, ``SequenceLength`` by a constant,
``ConcatFromSequence`` by ``Concat`` (with an ``Unsqueeze`` per item for ``new_axis=1``).

All or nothing: when any sequence cannot be followed (a position computed at run time, a
sequence that is a graph output or enters a subgraph or another op), the model is returned
unchanged and the stats say why. Verification against the source model checks the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import AttributeProto, ModelProto, NodeProto, helper, numpy_helper

from gpuxc.passes import Pass, PassConfig, PassContext, PassResult
from gpuxc.passes.plans import SEQUENCE_OPS
from gpuxc.project.graph import opset_map


class FoldSequencesConfig(PassConfig):
    pass


class CannotFold(Exception):
    """Why this model's sequences cannot be followed at compile time."""


class FoldSequences(Pass[FoldSequencesConfig]):
    name = "fold-sequences"
    description = "sequences with constant positions replaced by the tensors they hold (OpenVINO, CoreML)"
    Config = FoldSequencesConfig

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        if not any(n.op_type in SEQUENCE_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node):
            return PassResult(model=model, modified=False, stats={})
        out = ModelProto()
        out.CopyFrom(model)
        try:
            folded = _fold(out)
        except CannotFold as exc:
            return PassResult(model=model, modified=False, stats={"reason": str(exc)})
        return PassResult(model=out, modified=True, stats={"sequence_ops_replaced": folded})


def _fold(model: ModelProto) -> int:
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    opset = opset_map(model).get("", 13)
    sequences: dict[str, list[str]] = {}
    kept: list[NodeProto] = []
    replaced = 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value.t)
        if node.op_type not in SEQUENCE_OPS or node.domain not in ("", "ai.onnx"):
            if any(name in sequences for name in _reads(node)):
                raise CannotFold(f"sequence read by {node.op_type} '{node.name or node.output[0]}'")
            kept.append(node)
            continue
        replaced += 1
        kept += _replace(node, sequences, constants, opset)
    for output in graph.output:
        if output.name in sequences:
            raise CannotFold(f"sequence '{output.name}' is a graph output")
    del graph.node[:]
    graph.node.extend(kept)
    # Sequence-typed value_info of the removed values would no longer match anything.
    stale = [v for v in graph.value_info if v.name in sequences]
    for value in stale:
        graph.value_info.remove(value)
    return replaced


def _replace(node: NodeProto, sequences: dict[str, list[str]], constants: dict[str, np.ndarray],
             opset: int) -> list[NodeProto]:  # fmt: skip
    """The nodes standing for ``node`` (none for a builder: it only updates ``sequences``)."""
    op, inputs, out = node.op_type, list(node.input), node.output[0]
    if op == "SequenceEmpty":
        sequences[out] = []
        return []
    if op == "SequenceConstruct":
        sequences[out] = inputs
        return []
    items = _sequence(inputs[0], sequences, node)
    if op == "SequenceInsert":
        given = len(inputs) > 2 and inputs[2]
        position = _position(inputs[2], constants, node, len(items), end_ok=True) if given else len(items)
        sequences[out] = items[:position] + [inputs[1]] + items[position:]
        return []
    if op == "SequenceErase":
        given = len(inputs) > 1 and inputs[1]
        position = _position(inputs[1], constants, node, len(items)) if given else len(items) - 1
        sequences[out] = items[:position] + items[position + 1:]
        return []
    if op == "SequenceAt":
        position = _position(inputs[1], constants, node, len(items))
        return [helper.make_node("Identity", [items[position]], [out], name=node.name or out)]
    if op == "SequenceLength":
        value = numpy_helper.from_array(np.array(len(items), np.int64))
        return [helper.make_node("Constant", [], [out], name=node.name or out, value=value)]
    # ConcatFromSequence
    attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis, new_axis = int(attrs["axis"]), int(attrs.get("new_axis", 0))
    if not items:
        raise CannotFold(f"ConcatFromSequence '{node.name or out}' of an empty sequence")
    nodes: list[NodeProto] = []
    if new_axis:
        unsqueezed = []
        for i, item in enumerate(items):
            name = f"{out}__gpuxc_item{i}"
            if opset >= 13:
                axes = f"{out}__gpuxc_axes"
                if i == 0:
                    value = numpy_helper.from_array(np.array([axis], np.int64))
                    nodes.append(helper.make_node("Constant", [], [axes], value=value))
                nodes.append(helper.make_node("Unsqueeze", [item, axes], [name]))
            else:
                nodes.append(helper.make_node("Unsqueeze", [item], [name], axes=[axis]))
            unsqueezed.append(name)
        items = unsqueezed
    nodes.append(helper.make_node("Concat", items, [out], name=node.name or out, axis=axis))
    return nodes


def _sequence(name: str, sequences: dict[str, list[str]], node: NodeProto) -> list[str]:
    if name not in sequences:
        raise CannotFold(f"{node.op_type} '{node.name or node.output[0]}' reads a sequence built at run time")
    return sequences[name]


def _position(name: str, constants: dict[str, np.ndarray], node: NodeProto, length: int, end_ok: bool = False) -> int:
    """A constant position in a sequence of ``length`` items, negatives counted from the end;
    ``end_ok``: one past the last item is valid (SequenceInsert appends there)."""
    if name not in constants:
        raise CannotFold(f"{node.op_type} '{node.name or node.output[0]}' has a position computed at run time")
    position = int(np.asarray(constants[name]).reshape(()))
    position = position + length if position < 0 else position
    if not 0 <= position < length + (1 if end_ok else 0):
        raise CannotFold(f"{node.op_type} '{node.name or node.output[0]}': position out of range")
    return position


def _reads(node: NodeProto) -> list[str]:
    """What a node reads, its subgraphs' outer-scope references included (any name they use)."""
    names = list(node.input)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            names += [i for n in graph.node for i in _reads(n)]
    return names
