"""The output check: the MIL program's outputs against the ONNX outputs (name, shape, dtype)."""

from __future__ import annotations

from typing import Any

import onnx

# Interchangeable dtype names when comparing an ONNX signature with the MIL program.
SAME_DTYPE = {"float32": "fp32", "float64": "fp32", "float16": "fp16", "int64": "int32", "int32": "int32",
              "bool": "bool"}  # fmt: skip


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
