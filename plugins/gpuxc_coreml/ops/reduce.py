"""Reductions over constant axes (ReduceMean, ReduceSum, ...), ArgMax/ArgMin, CumSum and TopK."""

from __future__ import annotations

import onnx

from gpuxc_coreml.graph import Graph, Untranslatable, Var, attrs, axes_of, norm_axis, translates

# ONNX op -> (MIL op, the opset from which the axes are an input rather than an attribute).
REDUCTIONS = {"ReduceMean": ("reduce_mean", 18), "ReduceSum": ("reduce_sum", 13), "ReduceMax": ("reduce_max", 18),
              "ReduceMin": ("reduce_min", 18), "ReduceProd": ("reduce_prod", 18), "ReduceL1": ("reduce_l1_norm", 18),
              "ReduceL2": ("reduce_l2_norm", 18), "ReduceLogSum": ("reduce_log_sum", 18),
              "ReduceLogSumExp": ("reduce_log_sum_exp", 18), "ReduceSumSquare": ("reduce_sum_square", 18)}  # fmt: skip
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


@translates("ArgMax", "ArgMin", note="select_last_index=0 only")
def arg_reduce(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    if a.get("select_last_index", 0):
        raise Untranslatable(f"{node.op_type} '{node.name}': select_last_index=1 is not supported")
    op = g.mb.reduce_argmax if node.op_type == "ArgMax" else g.mb.reduce_argmin
    return [op(x=g.var(node.input[0]), axis=int(a.get("axis", 0)), keep_dims=bool(a.get("keepdims", 1)),
               name=node.output[0])]  # fmt: skip


@translates("CumSum", note="constant axis; exclusive as the inclusive sum minus x")
def cumsum(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    axis = int(g.need_const(node, 1, "axis").reshape(-1)[0])
    x = g.var(node.input[0])
    if not a.get("exclusive", 0):
        return [g.mb.cumsum(x=x, axis=axis, reverse=bool(a.get("reverse", 0)), name=node.output[0])]
    # MIL's exclusive=True cannot be checked off macOS (coremltools 9's value inference for it
    # crashes); the inclusive sum minus x is the same thing and can.
    inclusive = g.mb.cumsum(x=x, axis=axis, reverse=bool(a.get("reverse", 0)))
    return [g.mb.sub(x=inclusive, y=x, name=node.output[0])]


@translates("TopK", note="constant k; ties may order differently from ONNX")
def top_k(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    k = int(a["k"]) if "k" in a else int(g.need_const(node, 1, "k").reshape(-1)[0])  # an attribute before opset 10
    axis = norm_axis(int(a.get("axis", -1)), len(g.shape(node.input[0])))
    values, indices = g.mb.topk(x=g.var(node.input[0]), k=k, axis=axis, ascending=not a.get("largest", 1),
                                name=node.output[0] + "_topk")  # fmt: skip
    outs = [g.mb.identity(x=v, name=n) if n else v for v, n in zip((values, indices), node.output, strict=False)]
    return outs
