"""What a hostile model file can make gpuxc do, bounded before any expensive or native step runs.

Each check reads the protobuf loaded *without* external data (gpuxc/project/model.py calls them
in this order): :func:`check_limits` (node count, ranks), :func:`check_text_fields` (strings that
are not UTF-8), then :func:`check_external_data` (every external-data location stays inside the
model's folder, through no symlink or hard link, and :func:`check_external_range`: every offset
and length fits the file and the tensor) before any weight file is opened (ONNX's own
``docs/ExternalDataSecurity.md``). The file-size bound (protobuf's 2 GiB) is checked before parsing.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import onnx
from onnx import AttributeProto, ModelProto, TensorProto

from gpuxc.errors import ModelError, UnsafeModelError
from gpuxc.project.graph import iter_tensors

# Bounds on what a model file can ask for (docs/architecture.md, "Hostile models").
MAX_PROTOBUF_BYTES = (1 << 31) - 1  # protobuf cannot parse a bigger message: weights go to external data
MAX_NODES = 1_000_000  # nodes in all graphs together; real exports have thousands to a few hundred thousand
MAX_RANK = 64  # NumPy's limit on array dimensions; ONNX itself has none
MAX_EXTERNAL_INT = (1 << 63) - 1  # ONNX Runtime reads offset and length as int64
_DIGITS = re.compile(r"[0-9]+")  # int() would also take " 1", "1_0", "+1" and non-ASCII digits


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
