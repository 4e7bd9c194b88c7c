"""Elementwise arithmetic, comparison and logic: one MIL op per ONNX op, operands broadcast."""

from __future__ import annotations

import numpy as np
import onnx

from gpuxc_coreml.graph import Graph, Untranslatable, Var, attrs, translates, unary_op

UNARY = {"Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Erf": "erf", "Abs": "abs", "Relu": "relu",
         "Sigmoid": "sigmoid", "Tanh": "tanh", "Identity": "identity", "Floor": "floor", "Ceil": "ceil",
         "Reciprocal": "inverse", "Sin": "sin", "Cos": "cos", "Not": "logical_not", "Softplus": "softplus",
         "Sign": "sign", "Round": "round", "Acos": "acos", "Asin": "asin", "Atan": "atan", "Atanh": "atanh",
         "Cosh": "cosh", "Sinh": "sinh", "Tan": "tan"}  # fmt: skip
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "Equal": "equal", "Greater": "greater",
          "Less": "less", "GreaterOrEqual": "greater_equal", "LessOrEqual": "less_equal", "And": "logical_and",
          "Or": "logical_or", "Xor": "logical_xor"}  # fmt: skip


@translates(*UNARY)
def unary(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return unary_op(node, g, UNARY[node.op_type])


@translates(*BINARY)
def binary(node: onnx.NodeProto, g: Graph) -> list[Var]:
    x, y = g.var(node.input[0]), g.var(node.input[1])  # in this order: the first use of a name makes its const
    return [getattr(g.mb, BINARY[node.op_type])(x=x, y=y, name=node.output[0])]


VARIADIC = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}


@translates(*VARIADIC, note="")
def variadic(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # ONNX Max/Min/Sum/Mean are variadic; MIL's binary ops take two operands, so chain them.
    op = getattr(g.mb, VARIADIC[node.op_type])
    values = [g.var(n) for n in node.input if n]
    last = node.output[0] if node.op_type != "Mean" else node.output[0] + "_sum"
    acc = values[0] if len(values) > 1 else g.mb.identity(x=values[0], name=last)
    for i, value in enumerate(values[1:], start=2):
        acc = op(x=acc, y=value, name=last) if i == len(values) else op(x=acc, y=value)
    if node.op_type == "Mean":
        acc = g.mb.real_div(x=acc, y=np.float32(len(values)), name=node.output[0])
    return [acc]


@translates("Mod", note="fmod=0 (the sign of the divisor, as Python's %) only")
def mod(node: onnx.NodeProto, g: Graph) -> list[Var]:
    if attrs(node).get("fmod", 0):
        # C fmod takes the dividend's sign; MIL mod is floored like ONNX fmod=0.
        raise Untranslatable(f"Mod '{node.name}': fmod=1 is not supported")
    return [g.mb.mod(x=g.var(node.input[0]), y=g.var(node.input[1]), name=node.output[0])]


@translates("Div", note="integer division floors (ONNX truncates): same for non-negative operands")
def div(node: onnx.NodeProto, g: Graph) -> list[Var]:
    x, y = g.var(node.input[0]), g.var(node.input[1])
    from coremltools.converters.mil.mil import types

    if types.is_int(x.dtype):
        # ONNX integer Div truncates; MIL floor_div rounds down: equal for non-negative operands.
        return [g.mb.floor_div(x=x, y=y, name=node.output[0])]
    return [g.mb.real_div(x=x, y=y, name=node.output[0])]


@translates("Neg")
def neg(node: onnx.NodeProto, g: Graph) -> list[Var]:
    x = g.var(node.input[0])
    minus_one = np.array(-1, dtype=np.float32 if x.dtype.__name__.startswith("fp") else np.int32)
    return [g.mb.mul(x=x, y=minus_one, name=node.output[0])]


@translates("Where")
def where(node: onnx.NodeProto, g: Graph) -> list[Var]:
    cond, a, b = (g.var(n) for n in node.input)
    return [g.mb.select(cond=cond, a=a, b=b, name=node.output[0])]
