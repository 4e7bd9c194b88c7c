"""Loading an ONNX model safely and describing it: its signature.

Order matters for safety: the protobuf is read *without* external data, every
external-data location is checked to stay inside the model's folder, and only
then is any weight file opened (ONNX's own ``docs/ExternalDataSecurity.md``).

A model is untrusted input. Besides containment, what a hostile file can make gpuxc
do is bounded before the expensive or native steps run: the file size (protobuf's
2 GiB), the node count, tensor ranks, and every external-data offset and length
(against the file's real size and the tensor's declared size). Nesting depth is
bounded by protobuf's own parser (100 messages). The native steps themselves
(checker, shape inference, ONNX Runtime) run in a child process during a compile:
see gpuxc/project/isolation.py.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto
from pydantic import BaseModel, ConfigDict

from gpuxc.digests import sha256_file  # noqa: F401 (plugins import it from here)
from gpuxc.errors import ModelError, UnsafeModelError, first_line

# ONNX Runtime no longer implements operators from opsets below 7 (FIELD_NOTES).
MIN_DEFAULT_OPSET = 7
ML_DOMAIN = "ai.onnx.ml"

# Bounds on what a model file can ask for (docs/architecture.md, "Hostile models").
MAX_PROTOBUF_BYTES = (1 << 31) - 1  # protobuf cannot parse a bigger message: weights go to external data
MAX_NODES = 1_000_000  # nodes in all graphs together; real exports have thousands to a few hundred thousand
MAX_RANK = 64  # NumPy's limit on array dimensions; ONNX itself has none
MAX_EXTERNAL_INT = (1 << 63) - 1  # ONNX Runtime reads offset and length as int64
_DIGITS = re.compile(r"[0-9]+")  # int() would also take " 1", "1_0", "+1" and non-ASCII digits


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
    """A loaded, checked model with its signature and where it came from."""

    proto: ModelProto
    path: Path
    signature: ModelSignature


def load_model(path: Path, *, check: bool = True) -> LoadedModel:
    """Load ``path`` with contained external data, check it, infer shapes, describe it."""
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
        if "MaxDepth" in str(exc):
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

    opsets = opset_map(proto)
    default_opset = opsets.get("", opsets.get("ai.onnx"))
    if default_opset is not None and default_opset < MIN_DEFAULT_OPSET:
        raise ModelError(
            f"{path}: opset {default_opset} is older than ONNX Runtime supports ({MIN_DEFAULT_OPSET}+)",
            hint="upgrade it with onnx.version_converter.convert_version(model, 17) and verify the result",
        )
    if check:
        try:
            # The path form handles models over 2 GB and external data; the proto form is faster.
            onnx.checker.check_model(str(path) if external else proto)
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"{path}: invalid ONNX model: {first_line(exc)}") from None
        except Exception as exc:
            raise ModelError(f"{path}: ONNX checker failed: {first_line(exc)}") from None

    proto = infer_shapes(proto)
    size = path.stat().st_size + sum((path.parent / rel).stat().st_size for rel in external)
    signature = describe(proto, sha256=sha256_file(path), size_bytes=size, external=external)
    return LoadedModel(proto=proto, path=path, signature=signature)


def infer_shapes(proto: ModelProto) -> ModelProto:
    """ONNX shape inference, non-strict: a model it cannot fully type is still a valid model."""
    if proto.ByteSize() > 1_900_000_000:
        return proto  # in-memory inference is limited to 2 GB protobufs
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return proto


def check_limits(proto: ModelProto, path: Path) -> None:
    """Refuse what no real model needs and would make later steps slow or fail badly: more than
    MAX_NODES nodes, tensors of rank over MAX_RANK. Iterative, so no depth can exhaust the stack."""
    nodes = 0
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        nodes += len(graph.node)
        if nodes > MAX_NODES:
            raise ModelError(
                f"{path}: more than {MAX_NODES:,} nodes (subgraphs included); gpuxc's limit is {MAX_NODES:,}"
            )
        for value in (*graph.input, *graph.output):
            rank = len(value.type.tensor_type.shape.dim) if value.type.HasField("tensor_type") else 0
            if rank > MAX_RANK:
                raise ModelError(
                    f"{path}: graph input/output '{value.name}' has rank {rank:,}; the limit is {MAX_RANK}"
                )
        for tensor in graph.initializer:
            if len(tensor.dims) > MAX_RANK:
                raise ModelError(f"{path}: initializer '{tensor.name}' has rank {len(tensor.dims):,}; "
                                 f"the limit is {MAX_RANK}")  # fmt: skip
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    graphs.append(attr.g)
                elif attr.type == AttributeProto.GRAPHS:
                    graphs.extend(attr.graphs)


def check_text_fields(proto: ModelProto, path: Path) -> None:
    """Refuse string fields that are not UTF-8: protobuf hands them over as ``bytes``, which every
    later step (names, doc strings, external-data entries) would trip over with a TypeError.

    Tensors' data fields are not visited (they are bytes by type, and may be gigabytes): only
    their names, doc strings and external-data entries.
    """
    stack: list[Any] = [proto]
    while stack:
        message = stack.pop()
        if isinstance(message, TensorProto):
            texts = [("name", message.name), ("doc_string", message.doc_string)]
            texts += [("external_data", v) for e in message.external_data for v in (e.key, e.value)]
            _refuse_bytes(texts, "TensorProto", path)
            continue
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                stack.extend(value if field.is_repeated else [value])
            elif field.type == field.TYPE_STRING:
                _refuse_bytes([(field.name, v) for v in (value if field.is_repeated else [value])],
                              message.DESCRIPTOR.name, path)  # fmt: skip


def _refuse_bytes(texts: list[tuple[str, Any]], owner: str, path: Path) -> None:
    for name, value in texts:
        if isinstance(value, bytes):
            raise ModelError(f"{path}: {owner}.{name} is not valid UTF-8 text ({value[:40]!r})")


def tensor_nbytes(tensor: TensorProto) -> int | None:
    """Bytes a tensor's data takes by its dims and type; None for strings, unknown types, bad dims."""
    if any(d < 0 for d in tensor.dims) or tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    count = math.prod(tensor.dims)
    sub_byte = {getattr(TensorProto, name, -1): bits for name, bits in
                (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
                 ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))}  # fmt: skip
    if tensor.data_type in sub_byte:
        return -(-count * sub_byte[tensor.data_type] // 8)
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:
        return None


def check_external_data(proto: ModelProto, base_dir: Path) -> list[str]:
    """Refuse external data that could read outside ``base_dir`` or more than is there; return the files.

    Checked before any of them is opened (``lstat`` only): absolute paths, ``..`` segments
    (``sub/../..`` included), symlinked files or folders, hard links (a second name for a file
    that may live anywhere), anything but a regular file (a folder, a FIFO that would block, a
    device), offsets and lengths that are not plain integers, pass int64, run past the end of
    the file or disagree with the tensor's declared size. Each refusal names the tensor and the
    location. (The model file itself is named by the user, not by the model: it may be a symlink.)
    """
    base = base_dir.resolve()
    files: set[str] = set()
    for tensor in iter_tensors(proto.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        where = f"initializer '{tensor.name}'"
        parts = Path(location.replace("\\", "/")).parts
        if not location or "\x00" in location or not parts:
            raise UnsafeModelError(f"{where}: external data location {location!r} is not a usable file name")
        said = f"{where}: external data location '{location}'"
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
            raise UnsafeModelError(f"{said} is absolute; it must stay inside the model folder")
        if ".." in parts:
            raise UnsafeModelError(f"{said} leaves the model folder ('..' is not allowed)")
        # Every component must be a real folder (the last a real file) inside base: no symlink hops out.
        probe = base
        for i, part in enumerate(parts):
            probe = probe / part
            try:
                info = os.lstat(probe)
            except OSError:
                raise ModelError(f"{said}: file not found next to the model") from None
            if stat.S_ISLNK(info.st_mode):
                raise UnsafeModelError(f"{said} goes through a symlink ('{'/'.join(parts[: i + 1])}')")
            if i < len(parts) - 1 and not stat.S_ISDIR(info.st_mode):
                raise ModelError(f"{said}: '{'/'.join(parts[: i + 1])}' is not a folder")
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO, socket or device"
            raise UnsafeModelError(f"{said} is {kind}, not a regular file")
        if info.st_nlink > 1:
            raise UnsafeModelError(f"{said} is a hard link ({info.st_nlink} names for one file); "
                                   "copy the data into the model folder")  # fmt: skip
        if not str(probe.resolve()).startswith(str(base) + os.sep):
            raise UnsafeModelError(f"{said} leaves the model folder")
        check_external_range(entries, info.st_size, tensor, said)
        files.add(Path(*parts).as_posix())
    return sorted(files)


def check_external_range(entries: dict[str, str], size: int, tensor: TensorProto, said: str) -> None:
    """offset/length: plain non-negative integers, inside a file of ``size`` bytes, the tensor's size."""
    values: dict[str, int] = {}
    for key in ("offset", "length"):
        if key not in entries:
            continue
        text = entries[key]
        if not _DIGITS.fullmatch(text):
            raise UnsafeModelError(f"{said}: {key} {text[:40]!r} is not a non-negative integer")
        if len(text) > 19 or int(text) > MAX_EXTERNAL_INT:
            raise UnsafeModelError(f"{said}: {key} {text[:40]} is out of range (over 2**63-1)")
        values[key] = int(text)
    offset = values.get("offset", 0)
    if offset > size:
        raise UnsafeModelError(f"{said}: offset {offset:,} is past the end of the file ({size:,} bytes)")
    # ONNX reads to the end of the file when there is no length (or it is 0).
    length = values.get("length") or size - offset
    if offset + length > size:
        raise UnsafeModelError(f"{said}: offset {offset:,} + length {length:,} runs past the end of the file "
                               f"({size:,} bytes)")  # fmt: skip
    expected = tensor_nbytes(tensor)
    if expected is not None and length != expected:
        raise UnsafeModelError(f"{said}: {length:,} bytes at offset {offset:,}, but the tensor's dims "
                               f"{list(tensor.dims)} need {expected:,}")  # fmt: skip


def iter_tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """Every tensor a graph holds: initializers, sparse values, Constant attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            elif attr.type == AttributeProto.GRAPH:
                yield from iter_tensors(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_tensors(sub)


def iter_nodes(graph: GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_nodes(sub)


def opset_map(proto: ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in proto.opset_import:
        domain = "" if entry.domain in ("", "ai.onnx") else entry.domain
        out[domain] = int(entry.version)
    return out


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
