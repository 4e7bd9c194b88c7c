"""Loading an ONNX model in this process and describing it: its signature.

Order matters for safety: the protobuf is read *without* external data, the checks of
gpuxc/project/model_safety.py bound what a hostile file can ask for and keep every
external-data location inside the model's folder, and only then is any weight file opened.
Nesting depth is bounded by protobuf's own parser (100 messages).

:func:`load_model` here runs the native steps (checker, shape inference) in the caller's
process: for a model gpuxc made or already loaded once. The entry point for an untrusted
model is :func:`gpuxc.project.isolation.load_model`, which runs this same function in a child
process under a memory limit and a clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import AttributeProto, ModelProto, TensorProto
from pydantic import BaseModel, ConfigDict

from gpuxc.digests import sha256_file
from gpuxc.errors import ModelError, first_line
from gpuxc.project.graph import iter_nodes, opset_map
from gpuxc.project.model_safety import MAX_PROTOBUF_BYTES, check_external_data, check_limits, check_text_fields
from gpuxc.project.upgrade import ModelUpgrade, upgrade

ML_DOMAIN = "ai.onnx.ml"


# What the *model file* says a tensor is (``ModelSignature.inputs``). Not to be confused with
# gpuxc.project.config.TensorSpec (what gpux.yml declares) or gpuxc.bundle.manifest.TensorSpecOut
# (what the manifest records for the bundle's callers). The docstring is the manifest schema's
# description (docs/bundle-format.schema.json): it stays as published.
class TensorInfo(BaseModel):
    """One graph input or output as the runtime sees it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: str  # numpy spelling ("float32", "int64", "bool", "string", "bfloat16")
    shape: list[int | str | None] | None  # int: fixed, str: symbolic, None: unknown; None: unknown rank


class ModelSignature(BaseModel):
    """What gpuxc knows about a model: recorded in every manifest and shown by ``inspect``."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opsets: dict[str, int]  # domain ("" is the default ONNX domain) -> version
    ir_version: int
    producer: str
    node_count: int  # nodes in the main graph
    op_types: dict[str, int]  # "domain:Op" or "Op" -> count, subgraphs included
    size_bytes: int  # model file plus external data files
    external_data: list[str]  # relative paths of external data files
    sha256: str  # of the model file itself
    has_subgraphs: bool

    def input(self, name: str) -> TensorInfo | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorInfo | None:
        return next((t for t in self.outputs if t.name == name), None)


@dataclass
class LoadedModel:
    """A loaded, checked model with its signature and where it came from.

    ``proto`` is what passes and targets build from: the source made current when it was old
    (``upgrade`` says how, gpuxc/project/upgrade.py). ``signature`` describes the source file.
    """

    proto: ModelProto
    path: Path
    signature: ModelSignature
    upgrade: ModelUpgrade | None = None


def load_model(path: Path, *, check: bool = True) -> LoadedModel:
    """Load ``path`` with contained external data, check it, infer shapes, describe it: in this process.

    For a model from the user, call :func:`gpuxc.project.isolation.load_model` (this function in a
    child process): a malformed file can crash or exhaust the native code run here.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    file_size = path.stat().st_size
    if file_size > MAX_PROTOBUF_BYTES:
        raise ModelError(
            f"{path}: model file is {file_size:,} bytes, over protobuf's limit of {MAX_PROTOBUF_BYTES:,}",
            hint="save the weights as external data: onnx.save_model(model, path, save_as_external_data=True)",
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, others raise their own
        if "MaxDepth" in str(exc) or _too_deep(path):
            raise ModelError(f"{path}: not a readable ONNX model: messages nest deeper than protobuf's limit of 100 "
                             "(about 30 levels of If/Loop subgraphs)") from None  # fmt: skip
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {first_line(exc)})") from None
    if not proto.HasField("graph"):
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    check_limits(proto, path)
    check_text_fields(proto, path)

    try:
        external = check_external_data(proto, path.parent)
    except ModelError as exc:
        raise type(exc)(f"{path}: {exc.message}", hint=exc.hint) from None
    if external:
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:
            raise ModelError(f"{path}: cannot read external data ({first_line(exc)})") from None

    if check:
        try:
            # The path form handles models over 2 GB and external data; the proto form is faster.
            onnx.checker.check_model(str(path) if external else proto)
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"{path}: invalid ONNX model: {first_line(exc)}") from None
        except Exception as exc:
            raise ModelError(f"{path}: ONNX checker failed: {first_line(exc)}") from None

    source = infer_shapes(proto)
    size = path.stat().st_size + sum((path.parent / rel).stat().st_size for rel in external)
    signature = describe(source, sha256=sha256_file(path), size_bytes=size, external=external)
    current, upgraded = upgrade(proto, str(path))
    if upgraded is not None:
        source = infer_shapes(current)
    return LoadedModel(proto=source, path=path, signature=signature, upgrade=upgraded)


def infer_shapes(proto: ModelProto) -> ModelProto:
    """ONNX shape inference, non-strict: a model it cannot fully type is still a valid model."""
    if proto.ByteSize() > 1_900_000_000:
        return proto  # in-memory inference is limited to 2 GB protobufs
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return proto


def describe(proto: ModelProto, *, sha256: str, size_bytes: int, external: list[str]) -> ModelSignature:
    graph = proto.graph
    initializer_names = {t.name for t in graph.initializer}
    # Old exporters (IR < 4) list initializers among the graph inputs; they are not user inputs.
    inputs = [tensor_info(v) for v in graph.input if v.name not in initializer_names]
    # Outputs may be sequences/maps (scikit-learn classifiers' ZipMap probabilities).
    outputs = [tensor_info(v, allow_non_tensor=True) for v in graph.output]
    counts: Counter[str] = Counter()
    has_subgraphs = False
    for node in iter_nodes(graph):
        counts[f"{node.domain}:{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
        if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            has_subgraphs = True
    return ModelSignature(
        inputs=inputs,
        outputs=outputs,
        opsets=opset_map(proto),
        ir_version=int(proto.ir_version),
        producer=" ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        node_count=len(graph.node),
        op_types=dict(sorted(counts.items())),
        size_bytes=size_bytes,
        external_data=external,
        sha256=sha256,
        has_subgraphs=has_subgraphs,
    )


def tensor_info(value: onnx.ValueInfoProto, allow_non_tensor: bool = False) -> TensorInfo:
    if "\x00" in value.name:
        # Names key the reference .npz (zip member names end at a NUL) and the runner's requests.
        shown = value.name.replace("\x00", "\\x00")[:80]
        raise ModelError(f"graph {'output' if allow_non_tensor else 'input'} '{shown}' has a NUL character in its name")
    tensor_type = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if tensor_type is None:
        if allow_non_tensor:
            return TensorInfo(name=value.name, dtype=type_name(value.type), shape=None)
        kind = value.type.WhichOneof("value")
        raise ModelError(f"graph input '{value.name}' is a {kind}, not a tensor; gpuxc bundles take tensor inputs")
    try:
        dtype = dtype_name(tensor_type.elem_type)
    except ModelError as exc:
        raise ModelError(f"graph {'output' if allow_non_tensor else 'input'} '{value.name}': {exc.message}") from None
    shape: list[int | str | None] | None
    if tensor_type.HasField("shape"):
        shape = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param and dim.dim_param != "?":
                shape.append(dim.dim_param)
            else:
                shape.append(None)
    else:
        shape = None
    return TensorInfo(name=value.name, dtype=dtype, shape=shape)


def type_name(tp: onnx.TypeProto) -> str:
    """``seq(map(int64,float32))``-style name of a non-tensor type."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return dtype_name(tp.tensor_type.elem_type)
    if kind == "sequence_type":
        return f"seq({type_name(tp.sequence_type.elem_type)})"
    if kind == "map_type":
        return f"map({dtype_name(tp.map_type.key_type)},{type_name(tp.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({type_name(tp.optional_type.elem_type)})"
    return str(kind)


def dtype_name(elem_type: int) -> str:
    """ONNX element type → the NumPy spelling used in gpux.yml and manifests."""
    if elem_type == TensorProto.STRING:
        return "string"
    if elem_type == TensorProto.BFLOAT16:
        return "bfloat16"
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:
        pass
    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        raise ModelError(f"unknown ONNX element type {elem_type}") from None


def save_model(proto: ModelProto, path: Path) -> list[str]:
    """Write ``proto`` to ``path``; weights go to ``<stem>.data`` when the protobuf would pass 2 GB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if proto.ByteSize() > 1_800_000_000:
        data_name = path.stem + ".data"
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)  # fmt: skip
        return [data_name]
    onnx.save_model(proto, str(path))
    return []


def model_metadata(proto: ModelProto) -> dict[str, Any]:
    return {p.key: p.value for p in proto.metadata_props}


def _too_deep(path: Path) -> bool:
    """Whether a model that failed to parse nests past protobuf's depth limit (gpuxc/project/nesting.py)."""
    from gpuxc.project.nesting import PROTOBUF_DEPTH_LIMIT, message_depth

    depth = message_depth(path.read_bytes())
    return depth is not None and depth > PROTOBUF_DEPTH_LIMIT
