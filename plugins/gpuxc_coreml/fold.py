"""Constant folding inside the translation: nodes whose inputs are all compile-time constants are
computed here, in ONNX semantics, instead of being translated to MIL.

Why here and with ``onnx.reference`` rather than leaving it to MIL's const propagation:

- Shapes are always static in a MIL program gpuxc builds, so ``Shape`` is a constant and the
  whole Shape -> Gather -> Cast -> Range / Mul / Add / Reshape chain that exporters emit for
  anchors, position ids or attention masks is known before CoreML sees it. Folding it node by
  node needs no ONNX shape inference (which loses data propagation through many ops) and no
  ONNX Runtime session (which would need the graph cut at every non-constant tensor).
- ONNX semantics, not MIL's: integer Div truncates (MIL floors), Gather takes negative
  indices, Range and Cast stay in int64 — MIL's value inference would compute these in int32
  with MIL's rules. The folded value is narrowed to int32/fp32 only once, when stored.
- Ops without a MIL translator (``Range``, ``Mod``, ``NonZero`` on constants...) and the
  ``ConstantOfShape`` weights of IR 3 models fold too, so they never reach CoreML.

Only static constants fold: initializers, Constant nodes, Shape results and what is computed
from them — never the constant feeds ``translate.evaluate`` uses to check the translators.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

import numpy as np
import onnx
from onnx import helper

# Nondeterministic ops must not become one fixed value; control flow has subgraphs.
NEVER_FOLD = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                        "Bernoulli", "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty"})  # fmt: skip
# Outputs known at compile time whatever their inputs: shapes are static in the MIL program.
ALWAYS_STATIC = frozenset({"Shape", "Size", "Constant"})
DEFAULT_DOMAINS = ("", "ai.onnx")


def is_foldable(node: onnx.NodeProto, static: Container[str]) -> bool:
    """Whether ``node`` can be computed at compile time, given the ``static`` names seen so far."""
    if node.domain not in DEFAULT_DOMAINS or node.op_type in NEVER_FOLD:
        return False
    if node.op_type in ALWAYS_STATIC:
        return True
    inputs = [n for n in node.input if n]
    return bool(inputs) and all(n in static for n in inputs)


def static_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name whose value is known at compile time (no shapes needed: Shape is static)."""
    static = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if is_foldable(node, static):
            static.update(n for n in node.output if n)
    return static


def evaluate_node(node: onnx.NodeProto, inputs: Iterable[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """The node's outputs computed by ONNX's reference implementation.

    int32 operands are widened to int64 first: the translator narrows ONNX int64 to int32 when
    it stores a constant, and ONNX semantics (Range, Gather indices, Cast) are defined on int64.
    """
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    feeds = {n: widen(v) for n, v in zip(names, inputs, strict=True) if n and v is not None}
    renamed = helper.make_node(node.op_type, names, [f"out{i}" for i in range(len(node.output))], domain=node.domain)
    renamed.attribute.extend(node.attribute)
    outs = ReferenceEvaluator(renamed, opsets={"": opset}).run(None, feeds)
    return [np.asarray(v) for v in outs]


def widen(value: np.ndarray) -> np.ndarray:
    return value.astype(np.int64) if value.dtype == np.int32 else value
