"""Batch, layer and instance normalization."""

from __future__ import annotations

from typing import Any

import onnx

from gpuxc_coreml.graph import Graph, Var, attrs, norm_axis, opt, translates


def epsilon(node: onnx.NodeProto) -> float:
    return float(attrs(node).get("epsilon", 1e-5))


@translates("BatchNormalization")
def batch_norm(node: onnx.NodeProto, g: Graph) -> list[Var]:
    scale, bias, mean, var = (g.var(n) for n in node.input[1:5])
    return [g.mb.batch_norm(x=g.var(node.input[0]), mean=mean, variance=var, gamma=scale, beta=bias,
                            epsilon=epsilon(node), name=node.output[0])]  # fmt: skip


@translates("LayerNormalization", note="axis to the last dim; optional scale/bias")
def layer_norm(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    axis = norm_axis(int(attrs(node).get("axis", -1)), len(shape))
    kwargs: dict[str, Any] = {"x": g.var(node.input[0]), "axes": list(range(axis, len(shape))),
                              "epsilon": epsilon(node), "name": node.output[0]}  # fmt: skip
    if opt(node, 1):
        kwargs["gamma"] = g.var(node.input[1])
    if opt(node, 2):
        kwargs["beta"] = g.var(node.input[2])
    return [g.mb.layer_norm(**kwargs)]


@translates("InstanceNormalization")
def instance_norm(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return [g.mb.instance_norm(x=g.var(node.input[0]), gamma=g.var(node.input[1]), beta=g.var(node.input[2]),
                               epsilon=epsilon(node), name=node.output[0])]  # fmt: skip


@translates("LRN", note="3-D or 4-D input")
def lrn(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # ONNX and MIL share the formula x / (bias + alpha / size * sum of squares)^beta over a
    # window of ``size`` channels centred on each (MIL calls bias k).
    a = attrs(node)
    return [g.mb.local_response_norm(x=g.var(node.input[0]), size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)),
                                     beta=float(a.get("beta", 0.75)), k=float(a.get("bias", 1.0)),
                                     name=node.output[0])]  # fmt: skip
