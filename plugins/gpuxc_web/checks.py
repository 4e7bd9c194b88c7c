"""What a browser cannot run, found before anything is built: size, data types, WebGPU limits.

ONNX Runtime Web runs the graph in WebAssembly (32-bit memory: the model, its weights and the
activations share at most 4 GiB, and a protobuf over 2 GiB cannot be parsed at all), or on WebGPU,
whose kernels do not compute int64 and whose storage buffers are limited (128 MiB per binding by
default; browsers may grant more). Errors stop the build with the node or tensor named; warnings
are recorded in the manifest (``artifact.settings.web_checks``) and printed: those parts run, but
on WASM instead of WebGPU, or only where the browser grants bigger buffers.

Operator support itself is checked where it is decided: loading the model in ONNX Runtime Web in
headless Chromium at compile time (the verification), whose error names the op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpuxc.errors import CompileError
from gpuxc.project.graph import iter_nodes

if TYPE_CHECKING:
    from onnx import ModelProto

MAX_MODEL_BYTES = 2 * 1024**3 - 1  # protobuf's limit: ORT Web parses the model in one piece
WEBGPU_BUFFER_BYTES = 128 * 1024**2  # WebGPU's default maxStorageBufferBindingSize
UNSUPPORTED_DTYPES = {"string": "strings"}  # ORT Web's WASM tensors: numbers and bools
_INT64 = 7  # onnx.TensorProto.INT64
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "NonZero", "ArgMax", "ArgMin", "TopK"}
_LISTED = 8  # names shown in a message


@dataclass
class WebChecks:
    """Findings that do not stop the build: recorded in the manifest, printed in the log."""

    warnings: list[str] = field(default_factory=list)
    int64_nodes: int = 0
    large_initializers: list[str] = field(default_factory=list)

    def record(self) -> dict[str, object]:
        return {"warnings": self.warnings, "int64_nodes": self.int64_nodes,
                "large_initializers": self.large_initializers}  # fmt: skip


def check_model(model: ModelProto, size_bytes: int, io_dtypes: dict[str, str]) -> WebChecks:
    """Refuse what no browser runs; warn about what runs only on WASM (see the module doc)."""
    if size_bytes > MAX_MODEL_BYTES:
        raise CompileError(f"web: the model is {size_bytes / 1024**3:.2f} GiB; a browser loads at most 2 GiB "
                           "(protobuf's limit, in WebAssembly's 32-bit memory)",
                           hint="quantize it (build.precision: int8-dynamic or int4-weights) or pick a native "
                                "target")  # fmt: skip
    refused = [f"'{name}' ({dtype})" for name, dtype in io_dtypes.items() if dtype in UNSUPPORTED_DTYPES]
    if refused:
        raise CompileError(f"web: ONNX Runtime Web tensors cannot hold strings: {', '.join(refused[:_LISTED])}",
                           hint="encode text as token ids before the model (preprocessing.tokenizer)")  # fmt: skip
    checks = WebChecks()
    int64_values = {v.name for v in [*model.graph.value_info, *model.graph.output]
                    if v.type.tensor_type.elem_type == _INT64}  # fmt: skip
    int64_nodes = [_name(n) for n in iter_nodes(model.graph) if n.op_type not in _SHAPE_OPS
                   and int64_values.intersection(n.output)]  # fmt: skip
    checks.int64_nodes = len(int64_nodes)
    if int64_nodes:
        checks.warnings.append(
            f"{len(int64_nodes)} nodes compute int64, which WebGPU kernels do not: they run on WASM when the "
            f"page uses WebGPU ({', '.join(int64_nodes[:_LISTED])}{', ...' if len(int64_nodes) > _LISTED else ''})"
        )
    for tensor in model.graph.initializer:
        size = _tensor_bytes(tensor)
        if size > WEBGPU_BUFFER_BYTES:
            checks.large_initializers.append(tensor.name)
    if checks.large_initializers:
        names = checks.large_initializers
        checks.warnings.append(
            f"{len(names)} weights exceed WebGPU's default 128 MiB storage buffer: WebGPU needs a browser "
            f"granting more, else WASM runs them ({', '.join(names[:_LISTED])})"
        )
    return checks


def _tensor_bytes(tensor: object) -> int:
    import numpy as np
    from onnx import helper

    dims = list(getattr(tensor, "dims", []))
    try:
        item = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize  # type: ignore[attr-defined]
    except Exception:
        item = 4
    return int(np.prod(dims, dtype=np.int64)) * item if dims else item


def _name(node: object) -> str:
    return getattr(node, "name", "") or f"{getattr(node, 'op_type', '?')} (unnamed)"
