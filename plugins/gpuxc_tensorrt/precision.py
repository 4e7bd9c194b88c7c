"""Per-layer precision of the graph TensorRT parses, read from the graph itself.

A strongly typed network takes each layer's type from the ONNX graph, so what the manifest records
is what the graph says: a node fed through DequantizeLinear runs in int8 (TensorRT fuses the Q/DQ
pair into the layer), one whose output is float16 runs in fp16, one whose output is float32 in
fp32. Casts and the Q/DQ nodes themselves are plumbing, not layers, and are not counted. This is
checked on the graph (and its numerics on ONNX Runtime CPU, the stand-in), never on an engine.
"""

from __future__ import annotations

from onnx import ModelProto, TensorProto

from gpuxc.project.model import infer_shapes

PLUMBING = frozenset({"Cast", "QuantizeLinear", "DequantizeLinear", "Constant", "Identity"})
FLOAT_TYPES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}


def node_precisions(model: ModelProto) -> dict[str, str]:
    """Node name (or ``op_type#index`` when unnamed) -> "int8", "fp16", "fp32" or "bf16"; nodes
    computing on integers or booleans only, and the plumbing, are left out."""
    typed = infer_shapes(model)
    graph = typed.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update((t.name, t.data_type) for t in graph.initializer)
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    out: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        if node.op_type in PLUMBING or not node.output:
            continue
        name = node.name or f"{node.op_type}#{index}"
        if any(i in dequantized for i in node.input):
            out[name] = "int8"
        elif (kind := FLOAT_TYPES.get(types.get(node.output[0], TensorProto.UNDEFINED))) is not None:
            out[name] = kind
    return out


def precision_counts(precisions: dict[str, str]) -> dict[str, int]:
    """How many layers run at each precision, sorted by name."""
    counts: dict[str, int] = {}
    for kind in precisions.values():
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))
