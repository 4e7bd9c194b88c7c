"""Open Inference Protocol (KServe v2) tensors: JSON and the binary tensor data extension.

Requests are decoded into NumPy arrays and checked against the bundle's inputs
(names, datatypes, shapes, byte sizes) before anything runs; responses are
encoded as JSON data or, when asked, as binary data after the JSON header
(``Inference-Header-Content-Length``).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from runner import jsontensors

HEADER_LENGTH = "inference-header-content-length"

# v2 datatype <-> the manifest's NumPy spelling.
TO_V2 = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16", "string": "BYTES",
}
FROM_V2 = {v: k for k, v in TO_V2.items()}


class ProtocolError(ValueError):
    """A malformed or mismatched v2 request: HTTP 400 with {"error": message}."""


def v2_datatype(dtype: str) -> str:
    return TO_V2.get(dtype, dtype.upper())


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON request header and the binary tail (empty without the extension), a view of
    ``body``: tensors are read from it without copying."""
    if header_length is None:
        json_part, tail = body, memoryview(b"")
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError("Inference-Header-Content-Length is not an integer") from None
        if not 0 < size <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {size} is outside the body ({len(body)} bytes)")
        json_part, tail = body[:size], memoryview(body)[size:]
    request = jsontensors.v2_request(json_part)  # numeric data straight into NumPy, when it can
    if request is None:
        try:
            request = json.loads(json_part)
        except ValueError:
            raise ProtocolError("request body is not valid JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError("request must be a JSON object with an 'inputs' list")
    return request, tail


def decode_inputs(request: dict[str, Any], tail: bytes | memoryview, specs: dict[str, dict[str, Any]],
                  encoded: dict[str, str] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Arrays by name; every check a server must make before running anything. ``encoded`` names
    the inputs that may also arrive as ``BYTES`` (a bundle's preprocessing): ``"image"``: encoded
    images (raw bytes in binary data, base64 in JSON), ``"text"``: UTF-8 text."""
    encoded = encoded or {}
    out: dict[str, np.ndarray] = {}
    offset = 0
    for item in request["inputs"]:
        if not isinstance(item, dict):
            raise ProtocolError("each input must be an object")
        name = item.get("name")
        if not isinstance(name, str) or (name not in specs and name not in encoded):
            raise ProtocolError(f"unexpected input '{name}'; the model takes: {', '.join([*specs, *encoded])}")
        if name in out:
            raise ProtocolError(f"input '{name}' given twice")
        datatype = item.get("datatype")
        kind = encoded.get(name) if datatype == "BYTES" or name not in specs else None
        want = "BYTES" if kind else v2_datatype(specs[name]["dtype"])
        if datatype != want:
            raise ProtocolError(f"input '{name}': datatype {datatype} does not match the model's {want}")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers")
        count = int(np.prod(shape)) if shape else 1
        params = item.get("parameters") or {}
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(tail):
                raise ProtocolError(f"input '{name}': binary_data_size {size} exceeds the binary data sent")
            chunk = tail[offset:offset + size]  # a view when tail is one
            offset += size
            array = _from_bytes(name, chunk, datatype, count, raw=kind is not None)
        else:
            if "data" not in item:
                raise ProtocolError(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
            array = _from_json(name, item["data"], datatype, count)
            if kind == "image":
                array = _base64_images(name, array)
        out[name] = array.reshape(shape)
    if offset != len(tail):
        raise ProtocolError(f"{len(tail) - offset} byte(s) of binary data belong to no input")
    # Text replaces the token inputs: the runner's input checks name any still missing after it.
    missing = [n for n in specs if n not in out and not encoded]
    if missing:
        raise ProtocolError(f"missing input '{missing[0]}'")
    return out


def _np_type(datatype: str) -> Any:
    name = FROM_V2.get(datatype)
    if name is None or name == "bfloat16":
        raise ProtocolError(f"datatype {datatype} is not supported")
    return object if name == "string" else np.dtype(name)


def _base64_images(name: str, array: np.ndarray) -> np.ndarray:
    from runner.preprocess import PreprocessError, decode_base64

    items = []
    for i, value in enumerate(array.reshape(-1).tolist()):
        if not isinstance(value, str):
            raise ProtocolError(f"input '{name}': BYTES data must be base64 strings")
        try:
            items.append(decode_base64(value, name if array.size == 1 else f"{name}[{i}]"))
        except PreprocessError as exc:
            raise ProtocolError(str(exc)) from None
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _from_bytes(name: str, chunk: bytes | memoryview, datatype: str, count: int, raw: bool = False) -> np.ndarray:
    """``raw``: BYTES elements stay bytes (encoded images; text decoded strictly later), not str."""
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise ProtocolError(f"input '{name}': truncated BYTES element")
            (length,) = struct.unpack_from("<I", chunk, pos)
            pos += 4
            if pos + length > len(chunk):
                raise ProtocolError(f"input '{name}': truncated BYTES element")
            element = bytes(chunk[pos:pos + length])
            items.append(element if raw else element.decode("utf-8", errors="replace"))
            pos += length
        if len(items) != count:
            raise ProtocolError(f"input '{name}': {len(items)} BYTES elements for shape with {count}")
        array = np.empty(len(items), dtype=object)  # np.array would make bytes elements a bytes dtype
        array[:] = items
        return array
    dtype = _np_type(datatype)
    if len(chunk) != count * dtype.itemsize:
        raise ProtocolError(f"input '{name}': {len(chunk)} bytes of data, the shape needs {count * dtype.itemsize}")
    # Read-only (a view of the request body): ONNX Runtime reads it in place, OpenVINO copies
    # such inputs itself; a byte swap (big-endian hosts only) makes the one copy.
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def _from_json(name: str, data: Any, datatype: str, count: int) -> np.ndarray:
    dtype = _np_type(datatype)
    if isinstance(data, jsontensors.Dense):  # decoded in C, already checked to fit the datatype
        if data.array.size != count:
            raise ProtocolError(f"input '{name}': {data.array.size} data elements for a shape with {count}")
        return data.array
    try:
        array = np.asarray(data, dtype=dtype if dtype is not object else object).reshape(-1)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"input '{name}': data does not match datatype {datatype}") from None
    if array.size != count:
        raise ProtocolError(f"input '{name}': {array.size} data elements for a shape with {count}")
    if dtype is not object and dtype.kind in "iub":
        # JSON numbers are doubles; refuse 1.5 for an integer tensor instead of truncating it.
        raw = np.asarray(data, dtype=object).reshape(-1)
        if any(isinstance(v, float) and not float(v).is_integer() for v in raw.tolist()):
            raise ProtocolError(f"input '{name}': non-integer values for datatype {datatype}")
    return array


def encode_response(model: str, version: str | None, outputs: dict[str, np.ndarray], specs: dict[str, dict[str, Any]],
                    request: dict[str, Any]) -> tuple[bytes, int | None]:
    """Response body and, when binary data is included, the JSON header length."""
    wanted = request.get("outputs")
    default_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    if wanted is None:
        selected = [(name, default_binary) for name in outputs]
    else:
        if not isinstance(wanted, list):
            raise ProtocolError("'outputs' must be a list")
        selected = []
        for item in wanted:
            name = item.get("name") if isinstance(item, dict) else None
            if name not in outputs:
                raise ProtocolError(f"unknown output '{name}'; the model gives: {', '.join(outputs)}")
            binary = (item.get("parameters") or {}).get("binary_data", default_binary)
            selected.append((name, bool(binary)))
    header: dict[str, Any] = {"model_name": model, "outputs": []}
    if version is not None:
        header["model_version"] = version
    if "id" in request:
        header["id"] = request["id"]
    blobs: list[bytes | memoryview] = []
    for name, binary in selected:
        value = np.asarray(outputs[name])
        datatype = v2_datatype("string" if value.dtype.kind in "OUS" else str(value.dtype))
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if binary:
            blob = _to_bytes(value, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json(value, datatype)
        header["outputs"].append(entry)
    head = jsontensors.dumps(header, allow_nan=False, default=str)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def _to_bytes(value: np.ndarray, datatype: str) -> bytes | memoryview:
    """BYTES elements length-prefixed; numbers as a view of the (contiguous, little-endian) array,
    copied once, into the response body."""
    if datatype == "BYTES":
        parts = []
        for item in value.reshape(-1).tolist():
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"), copy=False).data.cast("B")


def _to_json(value: np.ndarray, datatype: str) -> Any:
    flat = value.reshape(-1)
    if datatype == "BYTES":
        return [str(v) for v in flat.tolist()]
    if jsontensors.orjson is not None:
        return jsontensors.jsonable(flat)
    if flat.dtype.kind == "f":
        obj = flat.astype(object)
        obj[~np.isfinite(flat)] = None  # JSON has no NaN/Infinity
        return obj.tolist()
    return flat.tolist()
