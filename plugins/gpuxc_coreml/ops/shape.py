"""Ops that change a tensor's shape or dtype, and ops folded to constants (static shapes)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gpuxc_coreml.graph import MIL_DTYPE, Graph, Untranslatable, Var, attrs, axes_of, norm_axis, translates


@translates("Flatten")
def flatten(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    axis = norm_axis(int(attrs(node).get("axis", 1)), len(shape))
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis:], dtype=np.int64))
    return [g.mb.reshape(x=g.var(node.input[0]), shape=[outer, inner], name=node.output[0])]


@translates("Reshape", note="constant shape only (0 and -1 resolved here)")
def reshape(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.need_ints(node, 1, "the target shape")
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


@translates("Squeeze", note="constant axes")
def squeeze(node: onnx.NodeProto, g: Graph) -> list[Var]:
    axes = axes_of(node, g, 1)
    x = g.var(node.input[0])
    if axes is None:
        axes = [i for i, d in enumerate(g.shape(node.input[0])) if d == 1]
    if not axes:
        return [g.mb.identity(x=x, name=node.output[0])]
    return [g.mb.squeeze(x=x, axes=axes, name=node.output[0])]


@translates("Unsqueeze", note="constant axes")
def unsqueeze(node: onnx.NodeProto, g: Graph) -> list[Var]:
    axes = axes_of(node, g, 1)
    if axes is None:
        raise Untranslatable(f"Unsqueeze '{node.name}': no axes")
    rank = len(g.shape(node.input[0])) + len(axes)
    # MIL inserts axes one at a time; ONNX axes refer to the output rank, so insert in ascending order.
    return [g.mb.expand_dims(x=g.var(node.input[0]), axes=sorted(norm_axis(a, rank) for a in axes),
                             name=node.output[0])]  # fmt: skip


@translates("Cast", note="to float/float16/int32/int64 (as int32)/bool")
def cast(node: onnx.NodeProto, g: Graph) -> list[Var]:
    to = int(attrs(node)["to"])
    if to not in MIL_DTYPE:
        raise Untranslatable(f"Cast '{node.name}' to {TensorProto.DataType.Name(to)}")
    x = g.var(node.input[0])
    from coremltools.converters.mil.mil import types

    if types.builtin_to_string(x.dtype) == MIL_DTYPE[to]:
        return [g.mb.identity(x=x, name=node.output[0])]  # int64 -> int32 already happened at the inputs
    return [g.mb.cast(x=x, dtype=MIL_DTYPE[to], name=node.output[0])]


@translates("Constant", note="folded to a constant")
def constant(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = node.attribute[0]
    value = numpy_helper.to_array(a.t) if a.name == "value" else np.asarray(helper.get_attribute_value(a))
    return [g.fold(node.output[0], value)]


@translates("Shape", note="folded to a constant (static shapes)")
def shape_(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # Shapes are static here, so Shape is a constant; later Reshape/Slice can then read it.
    a = attrs(node)
    dims = g.shape(node.input[0])[a.get("start", 0) : a.get("end", None)]
    return [g.fold(node.output[0], np.asarray(dims, dtype=np.int32))]


@translates("ConstantOfShape", note="constant shape (folded)")
def constant_of_shape(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.need_ints(node, 0, "shape")
    value = attrs(node).get("value")
    fill = numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
    return [g.fold(node.output[0], np.full(shape, fill, dtype=np.asarray(fill).dtype))]


@translates("Size", note="folded to a constant (static shapes)")
def size(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return [g.fold(node.output[0], np.asarray(np.prod(g.shape(node.input[0]), dtype=np.int64)))]


@translates("Range", note="scalar start/limit/delta; folded when they are constants")
def range_(node: onnx.NodeProto, g: Graph) -> list[Var]:
    # With constant operands the node never gets here (gpuxc_coreml.fold computes it); this is
    # the run-time case, whose output length CoreML learns only when it runs.
    start, limit, delta = (g.mb.reshape(x=g.var(n), shape=[]) if g.var(n).shape else g.var(n) for n in node.input)
    return [g.mb.range_1d(start=start, end=limit, step=delta, name=node.output[0])]
