"""ONNX graph → CoreML MIL program, one small translator per ONNX op.

Every translator takes the node and a ``Graph`` (the names seen so far) and returns the
MIL values of the node's outputs. Operands that ONNX gives as tensors but MIL needs as
compile-time values (shapes, axes, pads, slice bounds) must be initializers or folded
Constants; a translator raises ``Untranslatable`` when they are not.

CoreML has no int64 tensors at its inputs or in most ops, so int64 initializers and
casts become int32; the output check treats ONNX int64 and MIL int32 as the same type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The value type the MIL builder hands around (coremltools' Var); kept loose so this
# module imports without coremltools for unsupported_ops().
Var = Any
Translator = Callable[[onnx.NodeProto, "Graph"], list[Var]]

TRANSLATORS: dict[str, Translator] = {}

# ONNX element type -> MIL dtype name (mb.cast) and builder type name (placeholders).
MIL_DTYPE = {
    TensorProto.FLOAT: "fp32",
    TensorProto.DOUBLE: "fp32",
    TensorProto.FLOAT16: "fp16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int32",
    TensorProto.BOOL: "bool",
}
# Interchangeable dtype names when comparing an ONNX signature with the MIL program.
SAME_DTYPE = {"float32": "fp32", "float64": "fp32", "float16": "fp16", "int64": "int32", "int32": "int32",
              "bool": "bool"}  # fmt: skip


class Untranslatable(Exception):
    """This node cannot be expressed in MIL (e.g. a shape given by a runtime tensor)."""


def translates(*op_types: str) -> Callable[[Translator], Translator]:
    def register(fn: Translator) -> Translator:
        for op in op_types:
            TRANSLATORS[op] = fn
        return fn

    return register


def unsupported_ops(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX op types with no translator, with how often each occurs (sorted by op type)."""
    default = ("", "ai.onnx")
    counts = Counter(n.op_type for n in model.graph.node if n.domain in default and n.op_type not in TRANSLATORS)
    counts.update(f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx"))
    return dict(sorted(counts.items()))


def describe_unsupported(missing: dict[str, int]) -> str:
    listed = ", ".join(f"{op} x{count}" for op, count in missing.items())
    return f"coreml cannot translate {len(missing)} op type(s): {listed}"


# -- graph state -------------------------------------------------------------------------------


class Graph:
    """Names in scope while translating: MIL values, and constants still held as NumPy."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from coremltools.converters.mil import Builder as mb

        self.mb = mb
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts: dict[str, np.ndarray] = {
            i.name: _narrow(numpy_helper.to_array(i)) for i in model.graph.initializer
        }
        self.values: dict[str, Var] = {}

    def const(self, name: str) -> np.ndarray | None:
        """The compile-time value of ``name``, or None when it is computed at run time."""
        if name in self.consts:
            return self.consts[name]
        var = self.values.get(name)
        val = getattr(var, "val", None) if var is not None else None
        return None if val is None else np.asarray(val)

    def need_const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        value = self.const(node.input[index])
        if value is None:
            raise Untranslatable(f"{node.op_type} '{node.name}': {what} must be a constant")
        return value

    def var(self, name: str) -> Var:
        if name not in self.values:
            self.values[name] = self.mb.const(val=self.consts[name], name=_const_name(name))
        return self.values[name]

    def shape(self, name: str) -> list[int]:
        shape = self.var(name).shape
        if any(not isinstance(d, int) for d in shape):
            raise Untranslatable(f"'{name}' has a non-static shape {shape}")
        return [int(d) for d in shape]


def _narrow(array: np.ndarray) -> np.ndarray:
    # CoreML ops take int32 indices and fp32 math; int64/float64 initializers are narrowed.
    if array.dtype == np.int64:
        return np.clip(array, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return array


def _const_name(name: str) -> str:
    return "const_" + "".join(c if c.isalnum() else "_" for c in name)


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _opt(node: onnx.NodeProto, index: int) -> str | None:
    """Name of optional input ``index``, or None when it is absent or empty."""
    return node.input[index] if len(node.input) > index and node.input[index] else None


def _axes(node: onnx.NodeProto, g: Graph, index: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as a constant input (newer ones)."""
    a = attrs(node)
    if "axes" in a:
        return [int(x) for x in a["axes"]]
    if _opt(node, index) is None:
        return None
    return [int(x) for x in g.need_const(node, index, "axes").reshape(-1)]


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# -- building the program ----------------------------------------------------------------------


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
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    placeholders = {}
    if feeds is None:
        for tensor in graph_inputs:
            elem = tensor.type.tensor_type.elem_type
            if elem not in MIL_DTYPE:
                raise Untranslatable(f"input '{tensor.name}' has element type {TensorProto.DataType.Name(elem)}")
            dtype = getattr(types, MIL_DTYPE[elem])
            placeholders[tensor.name] = mb.placeholder(shape=tuple(shapes[tensor.name]), dtype=dtype)
    with Function(placeholders, ct.target.iOS16) as func:
        g = Graph(model)
        for tensor in graph_inputs:
            if feeds is None:
                g.values[tensor.name] = func.inputs[tensor.name]
            else:
                g.values[tensor.name] = mb.const(val=_narrow(np.asarray(feeds[tensor.name])), name=tensor.name)
        for node in model.graph.node:
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


def evaluate(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Outputs computed by coremltools' value inference (None where a MIL op has none, e.g. conv)."""
    shapes = {k: list(np.asarray(v).shape) for k, v in feeds.items()}
    program = build_program(model, shapes, feeds)
    result: dict[str, np.ndarray | None] = {}
    for var in program.functions["main"].outputs:
        result[var.name] = None if var.val is None else np.asarray(var.val)
    return result


def output_signature(program: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype name) of every output of the program's main function."""
    from coremltools.converters.mil.mil import types

    return [(v.name, tuple(int(d) for d in v.shape), types.builtin_to_string(v.dtype))
            for v in program.functions["main"].outputs]  # fmt: skip


def expected_outputs(
    model: onnx.ModelProto, shapes: dict[str, list[int]]
) -> list[tuple[str, tuple[int, ...] | None, str]]:
    """(name, shape or None when not inferable, MIL dtype name) of each ONNX output at ``shapes``."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for tensor in fixed.graph.input:
        if tensor.name in shapes:
            dims = tensor.type.tensor_type.shape.dim
            for dim, value in zip(dims, shapes[tensor.name], strict=False):
                dim.Clear()
                dim.dim_value = int(value)
    inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False)
    rows = []
    for out in inferred.graph.output:
        tt = out.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        shape = None if not tt.HasField("shape") or None in dims else tuple(dims)
        dtype = SAME_DTYPE.get(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "?")
        rows.append((out.name, shape, dtype))
    return rows


def signature_mismatches(model: onnx.ModelProto, shapes: dict[str, list[int]], program: Any) -> list[str]:
    """Where the program's outputs differ from the ONNX outputs in name, shape or dtype."""
    problems = []
    got = output_signature(program)
    want = expected_outputs(model, shapes)
    if [g[0] for g in got] != [w[0] for w in want]:
        return [f"outputs {[g[0] for g in got]} != ONNX outputs {[w[0] for w in want]}"]
    for (name, shape, dtype), (_, want_shape, want_dtype) in zip(got, want, strict=True):
        if want_shape is not None and shape != want_shape:
            problems.append(f"output '{name}' has shape {list(shape)}, ONNX says {list(want_shape)}")
        if dtype != want_dtype:
            problems.append(f"output '{name}' has dtype {dtype}, ONNX says {want_dtype}")
    return problems


# -- translators -------------------------------------------------------------------------------


def _unary(op_type: str, mil_op: str) -> None:
    @translates(op_type)
    def translate(node: onnx.NodeProto, g: Graph) -> list[Var]:
        return [getattr(g.mb, mil_op)(x=g.var(node.input[0]), name=node.output[0])]


for _onnx, _mil in {"Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Erf": "erf", "Abs": "abs", "Relu": "relu",
                    "Sigmoid": "sigmoid", "Tanh": "tanh", "Identity": "identity", "Floor": "floor",
                    "Ceil": "ceil", "Reciprocal": "inverse", "Sin": "sin", "Cos": "cos", "Not": "logical_not",
                    "Softplus": "softplus", "Sign": "sign", "Round": "round"}.items():  # fmt: skip
    _unary(_onnx, _mil)


def _binary(op_type: str, mil_op: str) -> None:
    @translates(op_type)
    def translate(node: onnx.NodeProto, g: Graph) -> list[Var]:
        return [getattr(g.mb, mil_op)(x=g.var(node.input[0]), y=g.var(node.input[1]), name=node.output[0])]


for _onnx, _mil in {"Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "Equal": "equal", "Greater": "greater",
                    "Less": "less", "GreaterOrEqual": "greater_equal", "LessOrEqual": "less_equal",
                    "And": "logical_and", "Or": "logical_or"}.items():  # fmt: skip
    _binary(_onnx, _mil)


@translates("Max", "Min")
def max_min(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # ONNX Max/Min are variadic; MIL's maximum/minimum take two operands, so chain them.
    op = g.mb.maximum if node.op_type == "Max" else g.mb.minimum
    values = [g.var(n) for n in node.input if n]
    if len(values) == 1:
        return [g.mb.identity(x=values[0], name=node.output[0])]
    acc = values[0]
    for i, value in enumerate(values[1:], start=2):
        acc = op(x=acc, y=value, name=node.output[0]) if i == len(values) else op(x=acc, y=value)
    return [acc]


@translates("Div")
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


@translates("LeakyRelu")
def leaky_relu(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return [g.mb.leaky_relu(x=g.var(node.input[0]), alpha=float(attrs(node).get("alpha", 0.01)), name=node.output[0])]


@translates("Elu")
def elu(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return [g.mb.elu(x=g.var(node.input[0]), alpha=float(attrs(node).get("alpha", 1.0)), name=node.output[0])]


@translates("HardSigmoid")
def hard_sigmoid(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    return [g.mb.sigmoid_hard(x=g.var(node.input[0]), alpha=alpha, beta=beta, name=node.output[0])]


@translates("HardSwish")
def hard_swish(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2); MIL has no single op for it.
    x = g.var(node.input[0])
    gate = g.mb.sigmoid_hard(x=x, alpha=1.0 / 6, beta=0.5)
    return [g.mb.mul(x=x, y=gate, name=node.output[0])]


@translates("Clip")
def clip(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    lo = float(a.get("min", -np.finfo(np.float32).max))
    hi = float(a.get("max", np.finfo(np.float32).max))
    if _opt(node, 1):
        lo = float(g.need_const(node, 1, "min"))
    if _opt(node, 2):
        hi = float(g.need_const(node, 2, "max"))
    return [g.mb.clip(x=g.var(node.input[0]), alpha=lo, beta=hi, name=node.output[0])]


def _softmax_axis(node: onnx.NodeProto, g: Graph) -> int:
    rank = len(g.shape(node.input[0]))
    default = -1 if g.opset >= 13 else 1
    axis = _norm(int(attrs(node).get("axis", default)), rank)
    if g.opset < 13 and axis != rank - 1:
        # Before opset 13 Softmax flattened from ``axis`` on; only the last-axis case matches MIL.
        raise Untranslatable(f"{node.op_type} '{node.name}': opset {g.opset} coerced axis {axis} (not the last)")
    return axis


@translates("Softmax")
def softmax(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return [g.mb.softmax(x=g.var(node.input[0]), axis=_softmax_axis(node, g), name=node.output[0])]


@translates("LogSoftmax")
def log_softmax(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # x - logsumexp(x) is the numerically stable form; log(softmax(x)) underflows to -inf.
    x = g.var(node.input[0])
    lse = g.mb.reduce_log_sum_exp(x=x, axes=[_softmax_axis(node, g)], keep_dims=True)
    return [g.mb.sub(x=x, y=lse, name=node.output[0])]


def _pairs(pads: list[int], axes: int) -> list[int]:
    """ONNX lists all begins then all ends; MIL pairs them per axis."""
    return [p for i in range(axes) for p in (pads[i], pads[i + axes])]


def _conv_kwargs(node: onnx.NodeProto, g: Graph) -> dict[str, Any]:
    """What Conv and ConvTranspose share: input, weight, strides, dilations, groups, pads, bias."""
    a = attrs(node)
    weight = g.var(node.input[1])
    spatial = len(weight.shape) - 2
    kwargs: dict[str, Any] = {
        "x": g.var(node.input[0]),
        "weight": weight,
        "strides": list(a.get("strides", [1] * spatial)),
        "dilations": list(a.get("dilations", [1] * spatial)),
        "groups": int(a.get("group", 1)),
        "name": node.output[0],
    }
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        kwargs["pad_type"] = {b"VALID": "valid", b"SAME_UPPER": "same", b"SAME_LOWER": "same_lower"}[a["auto_pad"]]
    else:
        kwargs["pad_type"] = "custom"
        kwargs["pad"] = _pairs(list(a.get("pads", [0] * 2 * spatial)), spatial)
    if _opt(node, 2):
        kwargs["bias"] = g.var(node.input[2])
    return kwargs


@translates("Conv")
def conv(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return [g.mb.conv(**_conv_kwargs(node, g))]


@translates("BatchNormalization")
def batch_norm(node: onnx.NodeProto, g: Graph) -> list[Var]:
    scale, bias, mean, var = (g.var(n) for n in node.input[1:5])
    eps = float(attrs(node).get("epsilon", 1e-5))
    return [g.mb.batch_norm(x=g.var(node.input[0]), mean=mean, variance=var, gamma=scale, beta=bias, epsilon=eps,
                            name=node.output[0])]  # fmt: skip


@translates("Gemm")
def gemm(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    trans_a, trans_b = bool(a.get("transA", 0)), bool(a.get("transB", 0))
    b_const = g.const(node.input[1])
    c_name = _opt(node, 2)
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


def _pool_args(node: onnx.NodeProto, spatial: int) -> dict[str, Any]:
    a = attrs(node)
    kernel = list(a["kernel_shape"])
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        pad_type = {b"VALID": "valid", b"SAME_UPPER": "same", b"SAME_LOWER": "same_lower"}[a["auto_pad"]]
        extra: dict[str, Any] = {}
    else:
        pads = list(a.get("pads", [0] * 2 * spatial))
        pad_type, extra = "custom", {"pad": [p for i in range(spatial) for p in (pads[i], pads[i + spatial])]}
    if any(d != 1 for d in a.get("dilations", [1] * spatial)):
        raise Untranslatable(f"{node.op_type} '{node.name}': dilated pooling")
    return {"kernel_sizes": kernel, "strides": list(a.get("strides", [1] * spatial)), "pad_type": pad_type,
            "ceil_mode": bool(a.get("ceil_mode", 0)), **extra}  # fmt: skip


@translates("MaxPool")
def max_pool(node: onnx.NodeProto, g: Graph) -> list[Var]:
    if len(node.output) > 1 and node.output[1]:
        raise Untranslatable(f"MaxPool '{node.name}': the Indices output")
    x = g.var(node.input[0])
    return [g.mb.max_pool(x=x, name=node.output[0], **_pool_args(node, len(x.shape) - 2))]


@translates("AveragePool")
def avg_pool(node: onnx.NodeProto, g: Graph) -> list[Var]:
    x = g.var(node.input[0])
    exclude = not bool(attrs(node).get("count_include_pad", 0))
    return [g.mb.avg_pool(x=x, exclude_padding_from_average=exclude, name=node.output[0],
                          **_pool_args(node, len(x.shape) - 2))]  # fmt: skip


@translates("GlobalAveragePool", "GlobalMaxPool")
def global_pool(node: onnx.NodeProto, g: Graph) -> list[Var]:
    x = g.var(node.input[0])
    axes = list(range(2, len(x.shape)))
    reduce = g.mb.reduce_mean if node.op_type == "GlobalAveragePool" else g.mb.reduce_max
    return [reduce(x=x, axes=axes, keep_dims=True, name=node.output[0])]


@translates("Flatten")
def flatten(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    axis = _norm(int(attrs(node).get("axis", 1)), len(shape))
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis:], dtype=np.int64))
    return [g.mb.reshape(x=g.var(node.input[0]), shape=[outer, inner], name=node.output[0])]


@translates("Reshape")
def reshape(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = [int(d) for d in g.need_const(node, 1, "the target shape").reshape(-1)]
    source = g.shape(node.input[0])
    if not attrs(node).get("allowzero", 0):
        # 0 copies the input's dim at that position (unless allowzero); -1 is left for MIL to infer.
        shape = [source[i] if d == 0 else d for i, d in enumerate(shape)]
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        total = int(np.prod(source, dtype=np.int64))
        shape = [total // known if d == -1 and known else d for d in shape]
    return [g.mb.reshape(x=g.var(node.input[0]), shape=shape, name=node.output[0])]


@translates("Transpose")
def transpose(node: onnx.NodeProto, g: Graph) -> list[Var]:
    rank = len(g.shape(node.input[0]))
    perm = [int(p) for p in attrs(node).get("perm", list(reversed(range(rank))))]
    return [g.mb.transpose(x=g.var(node.input[0]), perm=perm, name=node.output[0])]


@translates("Concat")
def concat(node: onnx.NodeProto, g: Graph) -> list[Var]:
    values = [g.var(n) for n in node.input if n]
    return [g.mb.concat(values=values, axis=int(attrs(node)["axis"]), name=node.output[0])]


@translates("Squeeze")
def squeeze(node: onnx.NodeProto, g: Graph) -> list[Var]:
    axes = _axes(node, g, 1)
    x = g.var(node.input[0])
    if axes is None:
        axes = [i for i, d in enumerate(g.shape(node.input[0])) if d == 1]
    if not axes:
        return [g.mb.identity(x=x, name=node.output[0])]
    return [g.mb.squeeze(x=x, axes=axes, name=node.output[0])]


@translates("Unsqueeze")
def unsqueeze(node: onnx.NodeProto, g: Graph) -> list[Var]:
    axes = _axes(node, g, 1)
    if axes is None:
        raise Untranslatable(f"Unsqueeze '{node.name}': no axes")
    rank = len(g.shape(node.input[0])) + len(axes)
    # MIL inserts axes one at a time; ONNX axes refer to the output rank, so insert in ascending order.
    return [g.mb.expand_dims(x=g.var(node.input[0]), axes=sorted(_norm(a, rank) for a in axes), name=node.output[0])]


@translates("Cast")
def cast(node: onnx.NodeProto, g: Graph) -> list[Var]:
    to = int(attrs(node)["to"])
    if to not in MIL_DTYPE:
        raise Untranslatable(f"Cast '{node.name}' to {TensorProto.DataType.Name(to)}")
    x = g.var(node.input[0])
    from coremltools.converters.mil.mil import types

    if types.builtin_to_string(x.dtype) == MIL_DTYPE[to]:
        return [g.mb.identity(x=x, name=node.output[0])]  # int64 -> int32 already happened at the inputs
    return [g.mb.cast(x=x, dtype=MIL_DTYPE[to], name=node.output[0])]


def _reduce(op_type: str, mil_op: str, axes_input_from: int) -> None:
    @translates(op_type)
    def translate(node: onnx.NodeProto, g: Graph) -> list[Var]:
        # Axes moved from an attribute to an input (ReduceSum at opset 13, the rest at 18).
        axes = _axes(node, g, 1) if g.opset >= axes_input_from else _axes(node, g, 99)
        keep = bool(attrs(node).get("keepdims", 1))
        x = g.var(node.input[0])
        if axes is None:
            if attrs(node).get("noop_with_empty_axes", 0):
                return [g.mb.identity(x=x, name=node.output[0])]
            axes = list(range(len(x.shape)))
        return [getattr(g.mb, mil_op)(x=x, axes=axes, keep_dims=keep, name=node.output[0])]


for _onnx, (_mil, _since) in {"ReduceMean": ("reduce_mean", 18), "ReduceSum": ("reduce_sum", 13),
                              "ReduceMax": ("reduce_max", 18), "ReduceMin": ("reduce_min", 18),
                              "ReduceProd": ("reduce_prod", 18)}.items():  # fmt: skip
    _reduce(_onnx, _mil, _since)


@translates("Gather")
def gather(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    axis = _norm(int(attrs(node).get("axis", 0)), len(shape))
    indices = g.const(node.input[1])
    if indices is None:
        return [g.mb.gather(x=g.var(node.input[0]), indices=g.var(node.input[1]), axis=axis, name=node.output[0])]
    # Negative indices count from the end in ONNX; resolve them here where the dim is known.
    indices = np.where(indices < 0, indices + shape[axis], indices).astype(np.int32)
    if indices.ndim == 0:
        picked = g.mb.gather(x=g.var(node.input[0]), indices=indices.reshape(1), axis=axis)
        return [g.mb.squeeze(x=picked, axes=[axis], name=node.output[0])]
    return [g.mb.gather(x=g.var(node.input[0]), indices=indices, axis=axis, name=node.output[0])]


@translates("Slice")
def slice_(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    rank = len(shape)
    a = attrs(node)
    if "starts" in a:  # opset < 10
        starts, ends = list(a["starts"]), list(a["ends"])
        axes, steps = list(a.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        starts = [int(v) for v in g.need_const(node, 1, "starts").reshape(-1)]
        ends = [int(v) for v in g.need_const(node, 2, "ends").reshape(-1)]
        axes = ([int(v) for v in g.need_const(node, 3, "axes").reshape(-1)] if _opt(node, 3)
                else list(range(len(starts))))  # fmt: skip
        steps = [int(v) for v in g.need_const(node, 4, "steps").reshape(-1)] if _opt(node, 4) else [1] * len(starts)
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    end_mask = [False] * rank
    for start, stop, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _norm(int(axis), rank)
        # Python's slice clamps exactly as ONNX specifies, including INT64 sentinels.
        lo, hi, st = slice(int(start), int(stop), int(step)).indices(shape[axis])
        begin[axis], end[axis], stride[axis] = lo, hi, st
        if st < 0 and hi < 0:
            end_mask[axis] = True  # runs through index 0; an end of -1 would mean "the last element"
    return [g.mb.slice_by_index(x=g.var(node.input[0]), begin=begin, end=end, stride=stride, end_mask=end_mask,
                                name=node.output[0])]  # fmt: skip


@translates("Where")
def where(node: onnx.NodeProto, g: Graph) -> list[Var]:
    cond, a, b = (g.var(n) for n in node.input)
    return [g.mb.select(cond=cond, a=a, b=b, name=node.output[0])]


@translates("Constant")
def constant(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = node.attribute[0]
    value = numpy_helper.to_array(a.t) if a.name == "value" else np.asarray(helper.get_attribute_value(a))
    g.consts[node.output[0]] = _narrow(np.asarray(value))
    return [g.var(node.output[0])]


@translates("Shape")
def shape_(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # Shapes are static here, so Shape is a constant; later Reshape/Slice can then read it.
    a = attrs(node)
    dims = g.shape(node.input[0])[a.get("start", 0) : a.get("end", None)]
    g.consts[node.output[0]] = np.asarray(dims, dtype=np.int32)
    return [g.var(node.output[0])]


# Limits of a translator worth a line in the coverage table (the rest translate in full).
NOTES = {
    "Conv": "pads, strides, dilations, group, auto_pad; weights may be runtime tensors",
    "Gemm": "transA/transB/alpha/beta; constant B with a 1-D C becomes one `linear` op",
    "Reshape": "constant shape only (0 and -1 resolved here)",
    "Squeeze": "constant axes", "Unsqueeze": "constant axes",
    "Slice": "constant starts/ends/axes/steps",
    "Gather": "negative constant indices resolved here; runtime indices must be non-negative",
    "Clip": "constant min/max", "MaxPool": "no Indices output, no dilations", "AveragePool": "no dilations",
    "Softmax": "opset < 13 only on the last axis", "LogSoftmax": "as Softmax; x - logsumexp(x)",
    "Div": "integer division floors (ONNX truncates): same for non-negative operands",
    "Cast": "to float/float16/int32/int64 (as int32)/bool",
    "Shape": "folded to a constant (static shapes)", "Constant": "folded to a constant",
    "ReduceMean": "constant axes", "ReduceSum": "constant axes", "ReduceMax": "constant axes",
    "ReduceMin": "constant axes", "ReduceProd": "constant axes",
    "HardSwish": "x * sigmoid_hard(x, 1/6, 1/2)",
    "Split": "constant split sizes (input or attribute), or equal parts",
    "Tile": "constant repeats", "Expand": "constant target shape",
    "Pad": "constant pads; modes constant, reflect, edge; no axes input",
    "Resize": "4-D NCHW, constant scales or sizes on H/W only; nearest or linear",
    "Upsample": "as Resize", "ConvTranspose": "no output_shape/output_padding",
    "ConstantOfShape": "constant shape (folded)", "Gelu": "exact or tanh approximation",
    "LayerNormalization": "axis to the last dim; optional scale/bias",
}  # fmt: skip


def op_coverage() -> Sequence[str]:
    """Every ONNX op type with a translator, sorted (the table in docs/targets/coreml.md)."""
    return sorted(TRANSLATORS)


def coverage_table() -> str:
    """The Markdown op coverage table of docs/targets/coreml.md (``python -m gpuxc_coreml.translate``)."""
    rows = ["| ONNX op | Limits |", "|---|---|"]
    rows += [f"| {op} | {NOTES.get(op, '')} |" for op in op_coverage()]
    return "\n".join(rows)


# -- ops added for the full list: normalizations, Gelu, Split, Expand/Tile, Pad, Resize,
# ConvTranspose, ConstantOfShape -------------------------------------------------------------


@translates("Gelu")
def gelu(node: onnx.NodeProto, g: Graph) -> list[Var]:
    approximate = attrs(node).get("approximate", b"none")
    mode = "TANH_APPROXIMATION" if approximate in (b"tanh", "tanh") else "EXACT"
    return [g.mb.gelu(x=g.var(node.input[0]), mode=mode, name=node.output[0])]


@translates("LayerNormalization")
def layer_norm(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    a = attrs(node)
    axis = _norm(int(a.get("axis", -1)), len(shape))
    kwargs: dict[str, Any] = {"x": g.var(node.input[0]), "axes": list(range(axis, len(shape))),
                              "epsilon": float(a.get("epsilon", 1e-5)), "name": node.output[0]}  # fmt: skip
    if _opt(node, 1):
        kwargs["gamma"] = g.var(node.input[1])
    if _opt(node, 2):
        kwargs["beta"] = g.var(node.input[2])
    return [g.mb.layer_norm(**kwargs)]


@translates("InstanceNormalization")
def instance_norm(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return [g.mb.instance_norm(x=g.var(node.input[0]), gamma=g.var(node.input[1]), beta=g.var(node.input[2]),
                               epsilon=float(attrs(node).get("epsilon", 1e-5)), name=node.output[0])]  # fmt: skip


@translates("Split")
def split(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    a = attrs(node)
    axis = _norm(int(a.get("axis", 0)), len(shape))
    if _opt(node, 1):
        sizes = [int(v) for v in g.need_const(node, 1, "split sizes").reshape(-1)]
    elif "split" in a:
        sizes = [int(v) for v in a["split"]]
    else:
        parts = len(node.output)
        size = -(-shape[axis] // parts)  # ceil, as ONNX: the last part may be smaller
        sizes = [min(size, shape[axis] - i * size) for i in range(parts)]
    outs = g.mb.split(x=g.var(node.input[0]), split_sizes=sizes, axis=axis, name=node.output[0] + "_split")
    return [g.mb.identity(x=o, name=n) for o, n in zip(outs, node.output, strict=True)]


@translates("Tile")
def tile(node: onnx.NodeProto, g: Graph) -> list[Var]:
    reps = [int(v) for v in g.need_const(node, 1, "repeats").reshape(-1)]
    return [g.mb.tile(x=g.var(node.input[0]), reps=reps, name=node.output[0])]


@translates("Expand")
def expand(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    target = [int(v) for v in g.need_const(node, 1, "shape").reshape(-1)]
    # Numpy-style broadcast of the two shapes, then tile the (rank-aligned) input to it.
    rank = max(len(shape), len(target))
    src = [1] * (rank - len(shape)) + shape
    dst = [1] * (rank - len(target)) + target
    out = [max(s, d) for s, d in zip(src, dst, strict=True)]
    x = g.var(node.input[0])
    if len(src) != len(shape):
        x = g.mb.reshape(x=x, shape=src)
    reps = [o // s if s else 1 for o, s in zip(out, src, strict=True)]
    return [g.mb.tile(x=x, reps=reps, name=node.output[0])]


@translates("Pad")
def pad(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    a = attrs(node)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = [int(v) for v in (a["pads"] if "pads" in a else g.need_const(node, 1, "pads").reshape(-1))]
    value = float(a.get("value", 0.0))
    if _opt(node, 2):
        value = float(g.need_const(node, 2, "constant value").reshape(-1)[0])
    if _opt(node, 3):
        raise Untranslatable(f"Pad '{node.name}': the axes input is not supported")
    pairs = _pairs(pads, len(shape))
    mil_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if mil_mode is None:
        raise Untranslatable(f"Pad '{node.name}': mode '{mode}' is not supported")
    return [g.mb.pad(x=g.var(node.input[0]), pad=np.asarray(pairs, np.int32), mode=mil_mode,
                     constant_val=value, name=node.output[0])]  # fmt: skip


@translates("ConstantOfShape")
def constant_of_shape(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = [int(v) for v in g.need_const(node, 0, "shape").reshape(-1)]
    value = attrs(node).get("value")
    fill = onnx.numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
    data = _narrow(np.full(shape, fill, dtype=np.asarray(fill).dtype))
    g.consts[node.output[0]] = data
    return [g.mb.const(val=data, name=_const_name(node.output[0]))]


@translates("ConvTranspose")
def conv_transpose(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    if "output_shape" in a or any(int(p) for p in a.get("output_padding", [])):
        raise Untranslatable(f"ConvTranspose '{node.name}': output_shape/output_padding are not supported")
    kwargs = _conv_kwargs(node, g)
    if kwargs["pad_type"] != "custom":
        raise Untranslatable(f"ConvTranspose '{node.name}': auto_pad is not supported")
    return [g.mb.conv_transpose(**kwargs)]


@translates("Resize", "Upsample")
def resize(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    if len(shape) != 4:
        raise Untranslatable(f"{node.op_type} '{node.name}': only 4-D NCHW inputs are supported")
    a = attrs(node)
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    # Scales come from input 'scales' (Upsample: input 1; Resize: input 2) or target 'sizes' (Resize input 3).
    scales = None
    if node.op_type == "Upsample":
        scales = [float(v) for v in g.need_const(node, 1, "scales").reshape(-1)]
    elif _opt(node, 2) and g.const(node.input[2]) is not None and g.const(node.input[2]).size:
        scales = [float(v) for v in g.const(node.input[2]).reshape(-1)]
    elif _opt(node, 3):
        sizes = [int(v) for v in g.need_const(node, 3, "sizes").reshape(-1)]
        scales = [s / d for s, d in zip(sizes, shape, strict=True)]
    if scales is None or scales[0] != 1 or scales[1] != 1:
        raise Untranslatable(f"{node.op_type} '{node.name}': needs constant spatial scales or sizes")
    x = g.var(node.input[0])
    if mode == "nearest":
        return [g.mb.upsample_nearest_neighbor(x=x, scale_factor_height=scales[2], scale_factor_width=scales[3],
                                               name=node.output[0])]  # fmt: skip
    if mode == "linear":
        align = a.get("coordinate_transformation_mode", b"half_pixel") in (b"align_corners", "align_corners")
        return [g.mb.upsample_bilinear(x=x, scale_factor_height=scales[2], scale_factor_width=scales[3],
                                       align_corners=align, name=node.output[0])]  # fmt: skip
    raise Untranslatable(f"{node.op_type} '{node.name}': mode '{mode}' is not supported")


if __name__ == "__main__":
    print(coverage_table())
