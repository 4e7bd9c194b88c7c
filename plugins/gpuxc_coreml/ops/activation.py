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


def coerced(node: onnx.NodeProto, g: Graph) -> tuple[int, list[int] | None]:
    """The softmax axis, and for opset < 13 with an axis before the last, the input's shape.

    Before opset 13 Softmax/LogSoftmax flatten the input to 2-D at ``axis`` and normalize over
    everything from ``axis`` on; that is a softmax over the last axis of a reshaped tensor.
    """
    shape = g.shape(node.input[0])
    default = -1 if g.opset >= 13 else 1
    axis = norm_axis(int(attrs(node).get("axis", default)), len(shape))
    if g.opset < 13 and axis != len(shape) - 1:
        return axis, shape
    return axis, None


def normalize(node: onnx.NodeProto, g: Graph, log: bool) -> list[Var]:
    axis, shape = coerced(node, g)
    x = g.var(node.input[0])
    if shape is not None:
        x = g.mb.reshape(x=x, shape=[int(np.prod(shape[:axis], dtype=np.int64)), -1])
        axis = 1
    name = node.output[0] if shape is None else node.output[0] + "_2d"
    if log:
        # x - logsumexp(x) is the numerically stable form; log(softmax(x)) underflows to -inf.
        lse = g.mb.reduce_log_sum_exp(x=x, axes=[axis], keep_dims=True)
        y = g.mb.sub(x=x, y=lse, name=name)
    else:
        y = g.mb.softmax(x=x, axis=axis, name=name)
    return [y if shape is None else g.mb.reshape(x=y, shape=shape, name=node.output[0])]


@translates("Softmax", note="opset < 13: over the dims from axis on, as ONNX flattens them")
def softmax(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return normalize(node, g, log=False)


@translates("LogSoftmax", note="as Softmax; x - logsumexp(x)")
def log_softmax(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return normalize(node, g, log=True)


@translates("Mish", note="x * tanh(softplus(x))")
def mish(node: onnx.NodeProto, g: Graph) -> list[Var]:
    x = g.var(node.input[0])
    return [g.mb.mul(x=x, y=g.mb.tanh(x=g.mb.softplus(x=x)), name=node.output[0])]


@translates("Softsign")
def softsign(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return unary_op(node, g, "softsign")


@translates("Selu", note="gamma * elu(x, alpha)")
def selu(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    alpha, gamma = float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875))
    return [g.mb.mul(x=g.mb.elu(x=g.var(node.input[0]), alpha=alpha), y=np.float32(gamma), name=node.output[0])]


@translates("ThresholdedRelu", note="x where x > alpha, else 0")
def thresholded_relu(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # Not MIL's thresholded_relu: it keeps x == alpha (ONNX zeroes it), and coremltools 9's
    # value inference for it overwrites its input in place.
    x = g.var(node.input[0])
    above = g.mb.greater(x=x, y=np.float32(attrs(node).get("alpha", 1.0)))
    return [g.mb.select(cond=above, a=x, b=np.float32(0), name=node.output[0])]


@translates("PRelu", note="slope broadcast as ONNX (any shape)")
def prelu(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # MIL's prelu wants one slope per channel of a rank >= 3 input; ONNX broadcasts any slope
    # shape, so spell it out: max(x, 0) + slope * min(x, 0).
    x, slope = g.var(node.input[0]), g.var(node.input[1])
    negative = g.mb.mul(x=slope, y=g.mb.minimum(x=x, y=np.float32(0)))
    return [g.mb.add(x=g.mb.relu(x=x), y=negative, name=node.output[0])]


@translates("Dropout", note="inference: identity; the mask output is all true")
def dropout(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # Compiled models run inference, where Dropout passes its input through (training_mode
    # from opset 12 is an input that exporters leave out or set to false).
    if opt(node, 2) and bool(g.need_const(node, 2, "training_mode").reshape(-1)[0]):
        raise Untranslatable(f"Dropout '{node.name}': training_mode is true")
    out = g.mb.identity(x=g.var(node.input[0]), name=node.output[0])
    if len(node.output) > 1 and node.output[1]:
        return [out, g.fold(node.output[1], np.ones(g.shape(node.input[0]), dtype=bool))]
    return [out]
