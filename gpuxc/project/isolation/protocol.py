"""How gpuxc and its model-isolation helper talk: data-only messages in length-prefixed frames.

Used by every process of gpuxc/project/isolation/ (the caller, the helper, its children).

No pickle: a message from a child that ran untrusted model code must not be able to make the
parent run code. A message is a JSON tree plus raw blobs; only these kinds travel:

- ``None``, ``bool``, ``int``, ``float``, ``str`` (JSON), lists and tuples (both come back as lists);
- mappings (any of these kinds as keys, e.g. ZipMap's int64 labels) → ``{"$map": [[k, v], ...]}``;
- ``bytes`` → ``{"$bytes": i}`` (blob i);
- NumPy arrays and scalars → ``{"$array": i}``, written with ``allow_pickle=False``; object arrays
  (ONNX Runtime's string tensors) → ``{"$objects": [shape, items]}`` with each item encoded again;
  arrays of ml_dtypes' types (bfloat16, float8, int4), which .npy cannot spell →
  ``{"$ml": [i, type name, shape]}``;
- ``Path`` → ``{"$path": s}``; a loaded model → ``{"$model": [proto blob, path, signature, upgrade]}``.

Decoding rebuilds only those kinds; anything else in a message is a :class:`ProtocolError`.

On a pipe, each message is one frame: its length (8 bytes, big-endian) and then its bytes.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

_HEAD = struct.Struct(">I")
MAX_DEPTH = 64


class ProtocolError(ValueError):
    """A message that is not in this format."""


def encode(value: Any) -> bytes:
    """``value`` (of the kinds in the module doc) as one message; anything else: ProtocolError."""
    blobs: list[bytes] = []
    tree = _enc(value, blobs, 0)
    header = json.dumps({"tree": tree, "blobs": [len(b) for b in blobs]}, allow_nan=True).encode()
    return _HEAD.pack(len(header)) + header + b"".join(blobs)


def decode(data: bytes) -> Any:
    """The value of one message; a message that is not in this format: ProtocolError."""
    if len(data) < _HEAD.size:
        raise ProtocolError("message too short")
    (n,) = _HEAD.unpack_from(data)
    try:
        header = json.loads(data[_HEAD.size : _HEAD.size + n])
        sizes = [int(s) for s in header["blobs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"bad header: {exc}") from None
    blobs, pos = [], _HEAD.size + n
    for size in sizes:
        if size < 0 or pos + size > len(data):
            raise ProtocolError("blob past the end of the message")
        blobs.append(data[pos : pos + size])
        pos += size
    return _dec(header["tree"], blobs, 0)


# -- frames --------------------------------------------------------------------------------------


def write_frame(fd: int, payload: bytes) -> None:
    """Write ``payload`` as one frame, all of it."""
    view = memoryview(frame(payload))
    while view:
        view = view[os.write(fd, view) :]


def frame(payload: bytes) -> bytes:
    """``payload`` as one frame's bytes (to be written later)."""
    return struct.pack(">Q", len(payload)) + payload


def read_frame(fd: int) -> bytes | None:
    """The next frame's payload; None at the end of the stream (the writer is gone)."""
    head = _read_exact(fd, 8)
    return None if head is None else _read_exact(fd, struct.unpack(">Q", head)[0])


def split_frames(data: bytes) -> list[Any]:
    """The messages of a stream's complete frames, decoded; a frame cut short (its writer died) is dropped."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">Q", data[pos : pos + 8])
        if pos + 8 + n > len(data):
            break
        out.append(decode(data[pos + 8 : pos + 8 + n]))
        pos += 8 + n
    return out


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# -- values ------------------------------------------------------------------------------------


def _enc(value: Any, blobs: list[bytes], depth: int) -> Any:
    import numpy as np

    if depth > MAX_DEPTH:
        raise ProtocolError("nested too deeply")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (list, tuple)):
        return [_enc(v, blobs, depth + 1) for v in value]
    if isinstance(value, dict):
        return {"$map": [[_enc(k, blobs, depth + 1), _enc(v, blobs, depth + 1)] for k, v in value.items()]}
    if isinstance(value, bytes):
        blobs.append(value)
        return {"$bytes": len(blobs) - 1}
    if isinstance(value, Path):
        return {"$path": str(value)}
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype == object:
            items = [_enc(v, blobs, depth + 1) for v in array.reshape(-1).tolist()]
            return {"$objects": [list(array.shape), items]}
        if array.dtype.type.__module__ == "ml_dtypes":  # bfloat16, float8, int4: no .npy spelling
            blobs.append(np.ascontiguousarray(array).tobytes())
            return {"$ml": [len(blobs) - 1, array.dtype.name, list(array.shape)]}
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, allow_pickle=False)
        blobs.append(buffer.getvalue())
        return {"$array": len(blobs) - 1, "scalar": isinstance(value, np.generic)}
    from gpuxc.project.model import LoadedModel

    if isinstance(value, LoadedModel):
        blobs.append(value.proto.SerializeToString())
        upgrade = value.upgrade.model_dump(mode="json") if value.upgrade is not None else None
        return {"$model": [len(blobs) - 1, str(value.path), value.signature.model_dump(mode="json"), upgrade]}
    raise ProtocolError(f"cannot send a {type(value).__name__}")


def _dec(tree: Any, blobs: list[bytes], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError("nested too deeply")
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [_dec(v, blobs, depth + 1) for v in tree]
    if not isinstance(tree, dict) or len(tree) not in (1, 2):
        raise ProtocolError("unknown value")
    try:
        if "$map" in tree:
            return {_key(_dec(k, blobs, depth + 1)): _dec(v, blobs, depth + 1) for k, v in tree["$map"]}
        if "$float" in tree:
            return float(tree["$float"])
        if "$bytes" in tree:
            return blobs[tree["$bytes"]]
        if "$path" in tree:
            return Path(tree["$path"])
        if "$array" in tree:
            return _array(blobs[tree["$array"]], bool(tree.get("scalar")))
        if "$objects" in tree:
            import numpy as np

            shape, items = tree["$objects"]
            out = np.empty(len(items), dtype=object)
            for i, item in enumerate(items):
                out[i] = _dec(item, blobs, depth + 1)
            return out.reshape([int(d) for d in shape])
        if "$ml" in tree:
            index, name, shape = tree["$ml"]
            return _ml_array(index, name, shape, blobs)
        if "$model" in tree:
            index, path, signature, upgrade = tree["$model"]
            return _model(index, path, signature, upgrade, blobs)
    except (IndexError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad value: {exc}") from None
    raise ProtocolError(f"unknown value kind {sorted(tree)}")


def _key(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)  # a key must be hashable
    return value


def _array(blob: bytes, scalar: bool) -> Any:
    import numpy as np

    array = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
    return array[()] if scalar else array


def _ml_array(index: int, name: str, shape: list[int], blobs: list[bytes]) -> Any:
    """An array of one of ml_dtypes' types, looked up by name in that module only."""
    import ml_dtypes
    import numpy as np

    kind = getattr(ml_dtypes, str(name), None)
    if not (isinstance(kind, type) and issubclass(kind, np.generic)):
        raise ProtocolError(f"unknown ml_dtypes type {name!r}")
    return np.frombuffer(blobs[index], dtype=kind).reshape([int(d) for d in shape]).copy()


def _model(index: int, path: str, signature: dict[str, Any], upgrade: dict[str, Any] | None, blobs: list[bytes]) -> Any:
    import onnx

    from gpuxc.project.model import LoadedModel, ModelSignature
    from gpuxc.project.upgrade import ModelUpgrade

    proto = onnx.ModelProto()
    proto.ParseFromString(blobs[index])
    return LoadedModel(proto=proto, path=Path(path), signature=ModelSignature.model_validate(signature),
                       upgrade=ModelUpgrade.model_validate(upgrade) if upgrade is not None else None)  # fmt: skip
