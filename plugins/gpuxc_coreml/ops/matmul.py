"""Matrix products: MatMul, and Gemm (one ``linear`` op for the common Linear layer)."""

from __future__ import annotations

import numpy as np
import onnx

from gpuxc_coreml.graph import Graph, Var, attrs, opt, translates


@translates("Gemm", note="transA/transB/alpha/beta; constant B with a 1-D C becomes one `linear` op")
def gemm(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    trans_a, trans_b = bool(a.get("transA", 0)), bool(a.get("transB", 0))
    b_const = g.const(node.input[1])
    c_name = opt(node, 2)
    c_const = g.const(c_name) if c_name else None
    if not trans_a and b_const is not None and (c_name is None or (c_const is not None and c_const.ndim <= 1)):
        # The common Linear layer: fold alpha/beta into constant weights, one MIL linear op.
        weight = (b_const if trans_b else b_const.T) * np.float32(alpha)
        bias = np.zeros(weight.shape[0], np.float32) if c_const is None else c_const * np.float32(beta)
        bias = np.broadcast_to(bias, (weight.shape[0],)).astype(np.float32)
        return [g.mb.linear(x=g.var(node.input[0]), weight=weight.astype(np.float32), bias=bias, name=node.output[0])]
    product = g.mb.matmul(x=g.var(node.input[0]), y=g.var(node.input[1]), transpose_x=trans_a, transpose_y=trans_b)
    if alpha != 1.0:
        product = g.mb.mul(x=product, y=np.float32(alpha))
    if c_name is None:
        return [g.mb.identity(x=product, name=node.output[0])]
    c = g.var(c_name)
    if beta != 1.0:
        c = g.mb.mul(x=c, y=np.float32(beta))
    return [g.mb.add(x=product, y=c, name=node.output[0])]


@translates("MatMul")
def matmul(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return [g.mb.matmul(x=g.var(node.input[0]), y=g.var(node.input[1]), name=node.output[0])]
