"""Reductions over constant axes (ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd)."""

from __future__ import annotations

import onnx

from gpuxc_coreml.graph import Graph, Var, attrs, axes_of, translates

# ONNX op -> (MIL op, the opset from which the axes are an input rather than an attribute).
REDUCTIONS = {"ReduceMean": ("reduce_mean", 18), "ReduceSum": ("reduce_sum", 13), "ReduceMax": ("reduce_max", 18),
              "ReduceMin": ("reduce_min", 18), "ReduceProd": ("reduce_prod", 18)}  # fmt: skip
ATTRIBUTE_ONLY = 99  # an input index no node has: read the axes from the attribute alone


@translates(*REDUCTIONS, note="constant axes")
def reduce(node: onnx.NodeProto, g: Graph) -> list[Var]:
    mil_op, axes_input_from = REDUCTIONS[node.op_type]
    axes = axes_of(node, g, 1 if g.opset >= axes_input_from else ATTRIBUTE_ONLY)
    keep = bool(attrs(node).get("keepdims", 1))
    x = g.var(node.input[0])
    if axes is None:
        if attrs(node).get("noop_with_empty_axes", 0):
            return [g.mb.identity(x=x, name=node.output[0])]
        axes = list(range(len(x.shape)))
    return [getattr(g.mb, mil_op)(x=x, axes=axes, keep_dims=keep, name=node.output[0])]
