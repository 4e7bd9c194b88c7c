"""The translator core: the op registry, the names in scope while translating, and the ONNX
attribute/operand readers every op family shares.

Every translator takes the node and a ``Graph`` (the names seen so far) and returns the
MIL values of the node's outputs. Operands that ONNX gives as tensors but MIL needs as
compile-time values (shapes, axes, pads, slice bounds) must be initializers or folded
Constants; a translator raises ``Untranslatable`` when they are not.

CoreML has no int64 tensors at its inputs or in most ops, so int64 initializers and
casts become int32; the output check treats ONNX int64 and MIL int32 as the same type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The value type the MIL builder hands around (coremltools' Var); kept loose so this
# module imports without coremltools for unsupported_ops().
Var = Any
Translator = Callable[[onnx.NodeProto, "Graph"], list[Var]]

TRANSLATORS: dict[str, Translator] = {}
# Limits of a translator worth a line in the coverage table (the rest translate in full).
NOTES: dict[str, str] = {}

# ONNX element type -> MIL dtype name (mb.cast) and builder type name (placeholders).
MIL_DTYPE: dict[int, str] = {
    TensorProto.FLOAT: "fp32",
    TensorProto.DOUBLE: "fp32",
    TensorProto.FLOAT16: "fp16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int32",
    TensorProto.BOOL: "bool",
}


class Untranslatable(Exception):
    """This node cannot be expressed in MIL (e.g. a shape given by a runtime tensor)."""


def translates(*op_types: str, note: str = "") -> Callable[[Translator], Translator]:
    """Register the decorated function as the translator of ``op_types``; ``note`` states its limits."""

    def register(fn: Translator) -> Translator:
        for op in op_types:
            TRANSLATORS[op] = fn
            if note:
                NOTES[op] = note
        return fn

    return register


class Graph:
    """Names in scope while translating: MIL values, and constants still held as NumPy."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from coremltools.converters.mil import Builder as mb

        self.mb = mb
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts: dict[str, np.ndarray] = {i.name: narrow(numpy_helper.to_array(i)) for i in model.graph.initializer}
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

    def need_ints(self, node: onnx.NodeProto, index: int, what: str) -> list[int]:
        """Input ``index`` as a flat list of ints; it must be a constant."""
        return [int(v) for v in self.need_const(node, index, what).reshape(-1)]

    def var(self, name: str) -> Var:
        if name not in self.values:
            self.values[name] = self.mb.const(val=self.consts[name], name=const_name(name))
        return self.values[name]

    def fold(self, name: str, value: np.ndarray) -> Var:
        """Hold ``value`` as the constant ``name`` (later nodes can read it) and return its MIL const."""
        self.consts[name] = narrow(np.asarray(value))
        return self.var(name)

    def shape(self, name: str) -> list[int]:
        shape = self.var(name).shape
        if any(not isinstance(d, int) for d in shape):
            raise Untranslatable(f"'{name}' has a non-static shape {shape}")
        return [int(d) for d in shape]


def narrow(array: np.ndarray) -> np.ndarray:
    # CoreML ops take int32 indices and fp32 math; int64/float64 initializers are narrowed.
    if array.dtype == np.int64:
        return np.clip(array, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return array


def const_name(name: str) -> str:
    return "const_" + "".join(c if c.isalnum() else "_" for c in name)


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def text(value: str | bytes) -> str:
    """A string attribute as str (onnx hands them over as bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def opt(node: onnx.NodeProto, index: int) -> str | None:
    """Name of optional input ``index``, or None when it is absent or empty."""
    return node.input[index] if len(node.input) > index and node.input[index] else None


def axes_of(node: onnx.NodeProto, g: Graph, index: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as a constant input (newer ones)."""
    a = attrs(node)
    if "axes" in a:
        return [int(x) for x in a["axes"]]
    if opt(node, index) is None:
        return None
    return g.need_ints(node, index, "axes")


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def pad_pairs(pads: list[int], axes: int) -> list[int]:
    """ONNX lists all begins then all ends; MIL pairs them per axis."""
    return [p for i in range(axes) for p in (pads[i], pads[i + axes])]


def unary_op(node: onnx.NodeProto, g: Graph, mil_op: str, **params: Any) -> list[Var]:
    """The common shape of a translator: one MIL op on the node's first input, named as its output."""
    return [getattr(g.mb, mil_op)(x=g.var(node.input[0]), **params, name=node.output[0])]
