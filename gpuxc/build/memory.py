"""Memory estimates for the ``runtime.gpu.memory`` budget (GPUX's memory setting).

An estimate, not a measurement: weights are the candidate's initializers' bytes;
activations are every intermediate tensor of the *source* model at the reference
shapes (optimized graphs hold contrib ops that ONNX shape inference cannot type),
summed as if none shared memory (an upper bound: runtimes reuse buffers), halved
for fp16 variants. Both are in the manifest.
"""

from __future__ import annotations

import onnx
from onnx import ModelProto
from pydantic import BaseModel

from gpuxc.project.graph import iter_tensors
from gpuxc.project.model import infer_shapes


class MemoryEstimate(BaseModel):
    weights_bytes: int
    activations_bytes: int  # upper bound: no buffer reuse
    total_bytes: int


def _bytes(elem_type: int, dims: list[int]) -> int:
    if elem_type == onnx.TensorProto.STRING:
        return 0
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except Exception:
        itemsize = 4
    count = 1
    for d in dims:
        count *= d
    return count * itemsize


def estimate(model: ModelProto, activations: int, precision: str) -> MemoryEstimate:
    """The estimate for a candidate ``model`` given the source model's ``activations`` bytes."""
    weights = sum(_bytes(t.data_type, list(t.dims)) for t in iter_tensors(model.graph))
    acts = activations // 2 if precision == "fp16" else activations
    return MemoryEstimate(weights_bytes=weights, activations_bytes=acts, total_bytes=weights + acts)


def activation_bytes(source: ModelProto, shapes: dict[str, list[int]]) -> int:
    """Bytes of every intermediate and output tensor of ``source`` at ``shapes`` (no reuse)."""
    probe = ModelProto()
    probe.CopyFrom(source)
    # Shape inference needs small constants (Reshape targets) but not the weights: drop big ones.
    for tensor in probe.graph.initializer:
        if len(tensor.raw_data) > 4096:
            tensor.ClearField("raw_data")
    for value in probe.graph.input:
        if value.name in shapes and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name], strict=False):
                dim.dim_value = size
    del probe.graph.value_info[:]
    inferred = infer_shapes(probe)
    activations = 0
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value for d in tensor_type.shape.dim]
        if all(d.HasField("dim_value") for d in tensor_type.shape.dim):
            activations += _bytes(tensor_type.elem_type, dims)
    return activations

