"""ONNX graph → CoreML MIL program: the graph walk over the per-op translators, and the public
face of the translator (what the target, ``gpuxc inspect`` and the docs table use).

The translators live in ``gpuxc_coreml.ops`` (one module per op family) and register
themselves in ``gpuxc_coreml.graph.TRANSLATORS``; ``python -m gpuxc_coreml.translate``
prints the op coverage table of docs/targets/coreml.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

import gpuxc_coreml.ops  # noqa: F401  (registers every translator)
from gpuxc_coreml.fold import ALWAYS_STATIC, evaluate_node, is_foldable, static_names
from gpuxc_coreml.graph import MIL_DTYPE, NOTES, TRANSLATORS, Graph, Untranslatable, narrow
from gpuxc_coreml.signature import SAME_DTYPE, expected_outputs, output_signature, signature_mismatches

__all__ = ["MIL_DTYPE", "NOTES", "SAME_DTYPE", "TRANSLATORS", "WIDENED_INPUTS", "Graph", "Untranslatable",
           "build_program", "coverage_table", "describe_unsupported", "evaluate", "expected_outputs",
           "input_elem_type", "op_coverage", "output_signature", "signature_mismatches", "unsupported_ops",
           "widened_inputs"]  # fmt: skip

DEFAULT_DOMAINS = ("", "ai.onnx")
# ML Program inputs are fp16/fp32/int32 only: narrower integer inputs (image preprocessing's uint8
# pixels) become int32 placeholders, which hold every value exactly; the adapter widens on feed.
WIDENED_INPUTS: dict[int, int] = {TensorProto.UINT8: TensorProto.INT32, TensorProto.INT8: TensorProto.INT32,
                  TensorProto.UINT16: TensorProto.INT32, TensorProto.INT16: TensorProto.INT32}  # fmt: skip


def unsupported_ops(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX op types with no translator, with how often each occurs (sorted by op type).

    Nodes computed only from constants and static shapes are folded while translating
    (``gpuxc_coreml.fold``), so they need no translator and are not counted.
    """
    static = static_names(model)
    nodes = [n for n in model.graph.node if not (is_foldable(n, static) and n.op_type not in TRANSLATORS)]
    counts = Counter(n.op_type for n in nodes if n.domain in DEFAULT_DOMAINS and n.op_type not in TRANSLATORS)
    counts.update(f"{n.domain}.{n.op_type}" for n in nodes if n.domain not in DEFAULT_DOMAINS)
    return dict(sorted(counts.items()))


def describe_unsupported(missing: dict[str, int]) -> str:
    listed = ", ".join(f"{op} x{count}" for op, count in missing.items())
    return f"coreml cannot translate {len(missing)} op type(s): {listed}"


def build_program(
    model: onnx.ModelProto, shapes: dict[str, list[int]], feeds: dict[str, np.ndarray] | None = None
) -> Any:
    """The model as a MIL program with static input ``shapes``.

    With ``feeds`` the inputs become constants instead, so coremltools' own value inference
    computes the outputs in NumPy: how the translation is checked on hosts without CoreML.
    """
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, types

    missing = unsupported_ops(model)
    if missing:
        raise Untranslatable(describe_unsupported(missing))
    # IR < 4 models list their initializers among the inputs; those are weights, not inputs. An
    # input nothing reads is dropped too: passes that fold such a model's ConstantOfShape weights
    # remove the `__SHAPE` initializers but can leave their stale input entries behind.
    initializers = {i.name for i in model.graph.initializer}
    read = {n for node in model.graph.node for n in node.input} | {o.name for o in model.graph.output}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers and i.name in read]
    placeholders = {}
    if feeds is None:
        for tensor in graph_inputs:
            elem = input_elem_type(tensor)
            if elem not in MIL_DTYPE:
                raise Untranslatable(f"input '{tensor.name}' has element type {TensorProto.DataType.Name(elem)}")
            if tensor.name not in shapes:
                raise Untranslatable(f"input '{tensor.name}' has no shape to translate at")
            dtype = getattr(types, MIL_DTYPE[elem])
            placeholders[tensor.name] = mb.placeholder(shape=tuple(shapes[tensor.name]), dtype=dtype)
    with Function(placeholders, ct.target.iOS16) as func:
        g = Graph(model)
        for tensor in graph_inputs:
            if feeds is None:
                g.values[tensor.name] = func.inputs[tensor.name]
            else:
                value = np.asarray(feeds[tensor.name])
                if tensor.type.tensor_type.elem_type in WIDENED_INPUTS:  # as the package's input would be
                    value = value.astype(helper.tensor_dtype_to_np_dtype(input_elem_type(tensor)))
                g.values[tensor.name] = mb.const(val=narrow(value), name=tensor.name)
        for node in model.graph.node:
            if node.op_type not in ALWAYS_STATIC and is_foldable(node, g.consts):
                # Held as NumPy only: a MIL const is made when (and if) a translated op reads it.
                values = evaluate_node(node, (g.consts.get(n) for n in node.input), g.opset)
                g.consts.update((name, narrow(v)) for name, v in zip(node.output, values, strict=False) if name)
                continue
            outs = TRANSLATORS[node.op_type](node, g)
            for name, value in zip(node.output, outs, strict=False):
                if name:
                    g.values[name] = value
        outputs = []
        for out in model.graph.output:
            value = g.var(out.name)
            if value.name != out.name or value.op is None or value.op.op_type == "const" and feeds is None:
                # Graph outputs that are inputs, constants or renamed still need their ONNX name.
                value = mb.identity(x=value, name=out.name)
            outputs.append(value)
        func.set_outputs(outputs)
    program = Program()
    program.add_function("main", func)
    return program


def input_elem_type(tensor: onnx.ValueInfoProto) -> int:
    """The ONNX element type the package's input for ``tensor`` has (see WIDENED_INPUTS)."""
    elem = int(tensor.type.tensor_type.elem_type)
    return WIDENED_INPUTS.get(elem, elem)


def widened_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """Input name -> the NumPy dtype its feed is cast to, for every input the package widens."""
    return {t.name: helper.tensor_dtype_to_np_dtype(input_elem_type(t)).name for t in model.graph.input
            if t.type.tensor_type.elem_type in WIDENED_INPUTS}  # fmt: skip


def evaluate(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Outputs computed by coremltools' value inference (None where a MIL op has none, e.g. conv)."""
    shapes = {k: list(np.asarray(v).shape) for k, v in feeds.items()}
    program = build_program(model, shapes, feeds)
    result: dict[str, np.ndarray | None] = {}
    for var in program.functions["main"].outputs:
        result[var.name] = None if var.val is None else np.asarray(var.val)
    return result


def op_coverage() -> Sequence[str]:
    """Every ONNX op type with a translator, sorted (the table in docs/targets/coreml.md)."""
    return sorted(TRANSLATORS)


def coverage_table() -> str:
    """The Markdown op coverage table of docs/targets/coreml.md (``python -m gpuxc_coreml.translate``)."""
    rows = ["| ONNX op | Limits |", "|---|---|"]
    rows += [f"| {op} | {NOTES.get(op, '')} |" for op in op_coverage()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(coverage_table())
