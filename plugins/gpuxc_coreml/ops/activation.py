"""Activations with parameters, and Softmax/LogSoftmax over one axis."""

from __future__ import annotations

import numpy as np
import onnx

from gpuxc_coreml.graph import Graph, Untranslatable, Var, attrs, norm_axis, opt, text, translates, unary_op


@translates("LeakyRelu")
def leaky_relu(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return unary_op(node, g, "leaky_relu", alpha=float(attrs(node).get("alpha", 0.01)))


@translates("Elu")
def elu(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return unary_op(node, g, "elu", alpha=float(attrs(node).get("alpha", 1.0)))


@translates("HardSigmoid")
def hard_sigmoid(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    return unary_op(node, g, "sigmoid_hard", alpha=float(a.get("alpha", 0.2)), beta=float(a.get("beta", 0.5)))


@translates("HardSwish", note="x * sigmoid_hard(x, 1/6, 1/2)")
def hard_swish(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2); MIL has no single op for it.
    x = g.var(node.input[0])
    gate = g.mb.sigmoid_hard(x=x, alpha=1.0 / 6, beta=0.5)
    return [g.mb.mul(x=x, y=gate, name=node.output[0])]


@translates("Clip", note="constant min/max")
def clip(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    lo = float(a.get("min", -np.finfo(np.float32).max))
    hi = float(a.get("max", np.finfo(np.float32).max))
    if opt(node, 1):
        lo = float(g.need_const(node, 1, "min"))
    if opt(node, 2):
        hi = float(g.need_const(node, 2, "max"))
    return unary_op(node, g, "clip", alpha=lo, beta=hi)


@translates("Gelu", note="exact or tanh approximation")
def gelu(node: onnx.NodeProto, g: Graph) -> list[Var]:
    mode = "TANH_APPROXIMATION" if text(attrs(node).get("approximate", b"none")) == "tanh" else "EXACT"
    return unary_op(node, g, "gelu", mode=mode)


def softmax_axis(node: onnx.NodeProto, g: Graph) -> int:
    rank = len(g.shape(node.input[0]))
    default = -1 if g.opset >= 13 else 1
    axis = norm_axis(int(attrs(node).get("axis", default)), rank)
    if g.opset < 13 and axis != rank - 1:
        # Before opset 13 Softmax flattened from ``axis`` on; only the last-axis case matches MIL.
        raise Untranslatable(f"{node.op_type} '{node.name}': opset {g.opset} coerced axis {axis} (not the last)")
    return axis


@translates("Softmax", note="opset < 13 only on the last axis")
def softmax(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return unary_op(node, g, "softmax", axis=softmax_axis(node, g))


@translates("LogSoftmax", note="as Softmax; x - logsumexp(x)")
def log_softmax(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # x - logsumexp(x) is the numerically stable form; log(softmax(x)) underflows to -inf.
    x = g.var(node.input[0])
    lse = g.mb.reduce_log_sum_exp(x=x, axes=[softmax_axis(node, g)], keep_dims=True)
    return [g.mb.sub(x=x, y=lse, name=node.output[0])]
