"""Per-layer precision of an ONNX graph, read from the graph itself: the per-variant summary of
``--optimize auto``'s candidates ("how many nodes run in which precision") for targets that ship
the ONNX graph (cpu, cuda, directml, tensorrt). Targets whose runtime decides the precision
(OpenVINO's hints) report their own (``Target.layer_precisions``).

A node fed through DequantizeLinear runs in int8 (runtimes fuse the Q/DQ pair into the layer, and
TensorRT's strongly typed network takes its types from the graph), an integer-kernel op
(MatMulInteger, ConvInteger, QLinear*) in int8, ``MatMulNBits`` in int<bits>, one whose output is
float16 in fp16, float32 in fp32. Casts and the Q/DQ nodes themselves are plumbing, not layers,
and are not counted; nor are nodes computing on integers or booleans only.
"""

from __future__ import annotations

from onnx import ModelProto, NodeProto, TensorProto

from gpuxc.project.model import infer_shapes

PLUMBING = frozenset({"Cast", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Constant",
                      "Identity"})  # fmt: skip
INTEGER_KERNELS = frozenset({"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat",
                             "DynamicQuantizeMatMul", "QGemm", "QAttention"})  # fmt: skip
FLOAT_TYPES: dict[int, str] = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}


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
        if node.op_type == "MatMulNBits":
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            out[name] = f"int{bits}"
        elif node.op_type in INTEGER_KERNELS or any(i in dequantized for i in node.input):
            out[name] = "int8"
        elif (kind := _float_kind(node, types)) is not None:
            out[name] = kind
    return out


def _float_kind(node: NodeProto, types: dict[str, int]) -> str | None:
    """The float type of a node's output; a contrib op shape inference cannot type (FusedConv) takes its
    first input's."""
    typed = types.get(node.output[0], TensorProto.UNDEFINED)
    if typed == TensorProto.UNDEFINED and node.input:
        typed = types.get(node.input[0], TensorProto.UNDEFINED)
    return FLOAT_TYPES.get(typed)


def precision_counts(precisions: dict[str, str]) -> dict[str, int]:
    """How many layers run at each precision, sorted by precision."""
    counts: dict[str, int] = {}
    for kind in precisions.values():
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))
