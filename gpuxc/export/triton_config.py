"""Triton's ``config.pbtxt`` for one bundle variant, built as Triton's own ``ModelConfig`` protobuf.

The message class comes from ``tritonclient.grpc.model_config_pb2`` (the schema Triton parses
config.pbtxt with), so a field or enum name that Triton does not know fails here, not on the
server. Imported lazily: ``tritonclient[grpc]`` is the ``export`` extra.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuxc.bundle.manifest import ServingInfo, TensorSpecOut
from gpuxc.errors import ExportError

_SCHEMA_MODULE = "_gpuxc_triton_model_config_pb2"

# The manifest's NumPy dtype names -> Triton's DataType enum names.
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "string": "TYPE_STRING", "bfloat16": "TYPE_BF16",
}  # fmt: skip
# The build precision of a tensorrt bundle -> the TensorRT accelerator's precision_mode (Q/DQ int8
# graphs need INT8 enabled in ONNX Runtime's TensorRT provider; their scales are in the graph).
TRT_PRECISION = {"fp32": "FP32", "fp16": "FP16", "int8-static": "INT8"}


@dataclass
class Plan:
    """What the config says beyond the tensors: where it runs and how."""

    name: str
    platform: str | None = None
    backend: str | None = None
    gpu: bool = False
    parameters: dict[str, str] = field(default_factory=dict)
    # ONNX Runtime's TensorRT execution accelerator (tensorrt bundles with a deferred engine).
    tensorrt: dict[str, str] | None = None
    max_batch_cap: int | None = None  # a serialized plan's profile allows no larger batch
    labels: dict[str, str] = field(default_factory=dict)  # output name -> label file name (in the model folder)


def batched(inputs: list[TensorSpecOut], outputs: list[TensorSpecOut]) -> bool:
    """Whether the first dim is a batch dim: every input's and output's is dynamic, one symbol at most.

    The rule the bundle's own server batches by (templates/runner/batching.py, ``Batcher.eligible``),
    so Triton batches exactly the bundles ``serve`` would.
    """
    firsts = [(t.shape or [1])[0] for t in [*inputs, *outputs]]
    dynamic = bool(firsts) and all(isinstance(d, str) or d is None for d in firsts)
    return dynamic and len({d for d in firsts if isinstance(d, str)}) <= 1


def _dims(tensor: TensorSpecOut, where: str, batch: bool) -> tuple[list[int], list[int] | None]:
    """Triton dims (-1 for a dynamic dim; the batch dim left out when batching) and a reshape for scalars."""
    if tensor.shape is None:
        raise ExportError(f"{where} '{tensor.name}': unknown rank; Triton needs the dims of every tensor")
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in tensor.shape]
    if batch:
        dims = dims[1:]
    if not dims:  # a scalar: Triton tensors have at least one dim; reshape gives the model its []
        return [1], []
    return dims, None


def _type(tensor: TensorSpecOut, where: str) -> str:
    name = TRITON_TYPES.get(tensor.dtype)
    if name is None:
        raise ExportError(f"{where} '{tensor.name}': type {tensor.dtype} has no Triton data type "
                          "(Triton serves tensors only)")  # fmt: skip
    return name


def model_config_module() -> Any:
    """Triton's ``model_config_pb2``; an ExportError naming the extra when tritonclient's grpc part is missing.

    Loaded from its file, not through ``tritonclient.grpc``: that package also registers Triton's
    gRPC service messages (``inference.ServerLiveRequest``...), which the kserve SDK registers too,
    and protobuf refuses the second set in one process (``gpuxc export kserve`` and ``triton`` both load).
    """
    loaded = sys.modules.get("tritonclient.grpc.model_config_pb2") or sys.modules.get(_SCHEMA_MODULE)
    if loaded is not None:
        return loaded
    path = _schema_path()
    if path is None or not path.is_file():
        raise ExportError("gpuxc export triton needs Triton's model config schema: "
                          "pip install 'gpuxc[export]' (tritonclient[grpc])")  # fmt: skip
    from gpuxc.bundle.runner_source import load_file_module

    return load_file_module(_SCHEMA_MODULE, path)


def _schema_path() -> Path | None:
    """tritonclient/grpc/model_config_pb2.py, found without importing tritonclient.grpc."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"


def build_config(plan: Plan, inputs: list[TensorSpecOut], outputs: list[TensorSpecOut], serving: ServingInfo) -> Any:
    """The ``ModelConfig`` message for a variant's tensors under ``plan`` and gpux.yml's serving settings."""
    pb = model_config_module()

    config = pb.ModelConfig(name=plan.name)
    if plan.platform:
        config.platform = plan.platform
    if plan.backend:
        config.backend = plan.backend
    batch = batched(inputs, outputs)
    if batch:
        size = max(1, serving.max_batch_size)
        config.max_batch_size = min(size, plan.max_batch_cap) if plan.max_batch_cap else size
        if config.max_batch_size > 1:
            config.dynamic_batching.max_queue_delay_microseconds = round(serving.max_queue_delay * 1e6)
    for tensor in inputs:
        data_type = pb.DataType.Value(_type(tensor, "input"))  # first: a sequence has no rank either
        dims, reshape = _dims(tensor, "input", batch)
        entry = config.input.add(name=tensor.name, data_type=data_type, dims=dims)
        if reshape is not None:
            entry.reshape.shape.extend(reshape)
    for tensor in outputs:
        data_type = pb.DataType.Value(_type(tensor, "output"))
        dims, reshape = _dims(tensor, "output", batch)
        out = config.output.add(name=tensor.name, data_type=data_type, dims=dims)
        if reshape is not None:
            out.reshape.shape.extend(reshape)
        if tensor.name in plan.labels:
            out.label_filename = plan.labels[tensor.name]
    kind = pb.ModelInstanceGroup.Kind.Value("KIND_GPU" if plan.gpu else "KIND_CPU")
    config.instance_group.add(count=max(1, serving.max_workers), kind=kind)
    for key, value in plan.parameters.items():
        config.parameters[key].string_value = value
    if plan.tensorrt is not None:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        for key, value in plan.tensorrt.items():
            accelerator.parameters[key] = value
    return config


def to_text(config: Any) -> str:
    """config.pbtxt: the message in protobuf text format."""
    from google.protobuf import text_format

    return str(text_format.MessageToString(config))
