"""Tensors in JSON bodies straight into NumPy, and NumPy outputs straight into JSON.

``json.loads`` makes one Python float per tensor element (about 50 ms for a 1x3x224x224 image)
and ``json.dumps`` one per output element. When they are installed (a bundle's serve
requirements list both), pysimdjson parses the body in C and hands each tensor's numbers over as
one buffer, and orjson writes arrays in C. Neither is required: without them, and for anything
the fast path does not take exactly (a body simdjson refuses, duplicate keys, bools, strings,
nulls, ragged nesting, values outside the tensor's dtype, an escaped bracket), the loaders return
``None`` or plain Python values and the caller takes the json-module path, so the arrays and the
error messages are the same either way.
"""

from __future__ import annotations

import importlib
import json
import math
import threading
from typing import Any

import numpy as np


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:  # the json module does the same, slower
        return None


simdjson: Any = _optional("simdjson")
orjson: Any = _optional("orjson")

_local = threading.local()  # a simdjson parser serves one document at a time: one per thread
_BUFFER_TYPES = {"d": np.float64, "i": np.int64, "u": np.uint64}
# v2 datatype -> (pysimdjson buffer type, the tensor's dtype). BOOL and BYTES take the plain path.
_V2_FAST = {
    "FP16": ("d", np.float16), "FP32": ("d", np.float32), "FP64": ("d", np.float64),
    "INT8": ("i", np.int8), "INT16": ("i", np.int16), "INT32": ("i", np.int32), "INT64": ("i", np.int64),
    "UINT8": ("i", np.uint8), "UINT16": ("i", np.uint16), "UINT32": ("i", np.uint32), "UINT64": ("u", np.uint64),
}  # fmt: skip
_OPEN_BRACKET = ord("[")
_SCRATCH = 1 << 18


class Dense:
    """A v2 tensor's ``data`` decoded in C: flat ``array`` in the request's datatype."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class _Slow(Exception):
    """This body takes the json-module path."""


def v2_request(body: bytes) -> dict[str, Any] | None:
    """The v2 request with each numeric ``data`` as :class:`Dense`; ``None``: use ``json.loads``."""
    return _load(body, _v2_object)


def predict_request(body: bytes, dtypes: dict[str, str]) -> dict[str, Any] | None:
    """A GPUX /predict body with the nested lists of numeric inputs (``dtypes``: the manifest's,
    by name) as the arrays ``np.asarray`` would make of them; ``None``: use ``json.loads``."""
    kinds = {name: _kind(dtype) for name, dtype in dtypes.items()}
    return _load(body, lambda doc, counts: _predict_object(doc, counts, kinds))


def _kind(dtype: str) -> str:
    try:
        return np.dtype(dtype).kind
    except TypeError:  # "string", "bfloat16": the plain path
        return ""


def _load(body: bytes, convert: Any) -> dict[str, Any] | None:
    # An escaped bracket (\u005b) would upset the count below. Numbers hold no backslash: the
    # single-byte search (memchr: 0.03 ms on 3 MB) spares most bodies the pattern search (2.5 ms).
    if simdjson is None or (body.find(b"\\") >= 0 and b"\\u005" in body):
        return None
    parser = getattr(_local, "parser", None) or simdjson.Parser()
    _local.parser = None  # in use: a re-entrant call (another request on this thread) gets its own
    try:
        doc = parser.parse(body)
        counts = [0, 0]  # brackets the converted document has, of them in dense arrays
        result = convert(doc, counts) if isinstance(doc, simdjson.Object) else None
        del doc
        # Every '[' of the body is an array in the result or a character in a string of it; a
        # number array holding a nested array at its last level (which as_buffer flattens) adds one.
        if result is not None and counts[1] and counts[0] != _open_brackets(body):
            result = None
        return result
    except (_Slow, ValueError, TypeError, RuntimeError, KeyError, IndexError, RecursionError):
        # Not JSON simdjson takes (NaN, 1e400, ints over 64 bits, bad UTF-8...), or not ours. The
        # parser refuses a new document while values of the last one live: start a fresh one.
        parser = None
        return None
    finally:
        _local.parser = parser


def _open_brackets(body: bytes) -> int:
    """How many '[' bytes. In slices through one scratch buffer per thread: a 3 MB comparison
    result freshly allocated (page faults) cost 2 ms, ``bytes.count`` 1.5 ms, this 0.4 ms."""
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = np.empty(_SCRATCH, dtype=bool)
    data = np.frombuffer(body, np.uint8)
    total = 0
    for start in range(0, data.size, _SCRATCH):
        part = data[start:start + _SCRATCH]
        out = scratch[:part.size]
        np.equal(part, _OPEN_BRACKET, out=out)
        total += int(np.count_nonzero(out))
    return total


def _fields(obj: Any) -> list[tuple[str, Any]]:
    """Keys and values, arrays and objects as simdjson's (items() would convert them to Python)."""
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        raise _Slow  # json keeps the last of duplicate keys, simdjson's lookups the first
    return [(key, obj[key]) for key in keys]


def _plain(value: Any, counts: list[int]) -> Any:
    """A simdjson value as json.loads gives it, its brackets counted."""
    if isinstance(value, simdjson.Object):
        value = value.as_dict()
    elif isinstance(value, simdjson.Array):
        value = value.as_list()
    counts[0] += _brackets(value)
    return value


def _brackets(value: Any) -> int:
    if isinstance(value, str):
        return value.count("[")
    if isinstance(value, list):
        return 1 + sum(_brackets(v) for v in value)
    if isinstance(value, dict):
        return sum(k.count("[") + _brackets(v) for k, v in value.items())
    return 0


def _v2_object(doc: Any, counts: list[int]) -> dict[str, Any]:
    request: dict[str, Any] = {}
    for key, value in _fields(doc):
        counts[0] += key.count("[")
        if key == "inputs" and isinstance(value, simdjson.Array):
            counts[0] += 1
            request[key] = [_v2_input(item, counts) if isinstance(item, simdjson.Object) else _plain(item, counts)
                            for item in value]  # fmt: skip
        else:
            request[key] = _plain(value, counts)
    return request


def _v2_input(obj: Any, counts: list[int]) -> dict[str, Any]:
    fields = _fields(obj)
    item: dict[str, Any] = {}
    data = None
    for key, value in fields:
        counts[0] += key.count("[")
        if key == "data" and isinstance(value, simdjson.Array):
            data = value
        else:
            item[key] = _plain(value, counts)
    if data is not None:
        fast = _V2_FAST.get(item.get("datatype"))  # type: ignore[arg-type]
        array = _numbers(data, fast[0], counts) if fast else None
        if array is not None and fast is not None and _fits(array, np.dtype(fast[1])):
            item["data"] = Dense(array.reshape(-1).astype(fast[1], copy=False))
        else:
            item["data"] = _plain(data, counts)
        keys = [key for key, _ in fields]  # keep the body's key order, as json.loads does
        item = {key: item[key] for key in keys}
    return item


def _predict_object(doc: Any, counts: list[int], kinds: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in _fields(doc):
        counts[0] += key.count("[")
        kind = kinds.get(key, "")
        array = None
        if isinstance(value, simdjson.Array) and kind in ("f", "i", "u"):
            array = _predict_array(value, kind, counts)
        if array is not None:
            data[key] = array
        elif key == "inputs" and isinstance(value, simdjson.Object):  # {"inputs": {...}}
            data[key] = _predict_object(value, counts, kinds)
        else:
            data[key] = _plain(value, counts)
    return data


def _predict_array(value: Any, kind: str, counts: list[int]) -> np.ndarray | None:
    """What ``np.asarray(nested list)`` gives: int64 when every number is an integer that fits,
    float64 otherwise; None where it would give anything else (bools, uint64, object)."""
    if not isinstance(_first_number(value), float):  # a float first: as_buffer("i") would fail, slowly
        array = _numbers(value, "i", counts)
        if array is not None:
            return array if array.size else array.astype(np.float64)  # np.asarray([]) is float64
    if kind in "iu":
        return None  # the json path says what is wrong with those values
    array = _numbers(value, "d", counts)
    if array is not None and array.size and float(np.abs(array).max()) >= 2.0**63 and bool(
            np.all(np.floor(array) == array)):  # fmt: skip
        return None  # maybe only integers, one over int64: NumPy would pick uint64 or object
    return array  # a fraction among them: float64, as NumPy makes it


def _first_number(value: Any) -> Any:
    while isinstance(value, simdjson.Array) and len(value):
        value = value[0]
    return value


def _numbers(value: Any, of_type: str, counts: list[int]) -> np.ndarray | None:
    """The array's numbers in the nesting's shape; None when ragged or not all numbers."""
    shape = _shape(value)
    if shape is None:
        return None
    try:
        flat = np.frombuffer(value.as_buffer(of_type=of_type), _BUFFER_TYPES[of_type])
    except (TypeError, ValueError, RuntimeError):  # bools, strings, nulls, objects, the wrong kind
        return None
    if flat.size != math.prod(shape):
        return None
    counts[0] += sum(math.prod(shape[:level]) for level in range(len(shape)))
    counts[1] += 1
    return flat.reshape(shape)


def _shape(array: Any) -> tuple[int, ...] | None:
    """Dims of a rectangular nesting, each sub-array's length checked; the last level's elements
    are left to as_buffer (numbers only) and the bracket count (no arrays)."""
    dims: list[int] = []
    level = [array]
    while True:
        size = len(level[0])
        if any(len(a) != size for a in level):
            return None
        dims.append(size)
        if size == 0 or not isinstance(level[0][0], simdjson.Array):
            return tuple(dims)
        below = [item for a in level for item in a]
        if not all(isinstance(item, simdjson.Array) for item in below):
            return None
        level = below


def _fits(array: np.ndarray, dtype: np.dtype[Any]) -> bool:
    """Integers within ``dtype`` (NumPy raises OverflowError on lists of out-of-range ints)."""
    if dtype.kind not in "iu" or dtype == array.dtype or not array.size:
        return True
    info = np.iinfo(dtype)
    return bool(array.min() >= info.min and array.max() <= info.max)


def jsonable(value: Any) -> Any:
    """An output ready for :func:`dumps`: numeric arrays stay arrays for orjson (floats as float64,
    so a client reads the same doubles as ``tolist`` gives), anything else as ``to_jsonable``."""
    if (orjson is not None and isinstance(value, np.ndarray) and value.ndim and value.dtype.kind in "fiub"
            and value.dtype.itemsize <= 8):  # fmt: skip
        return np.ascontiguousarray(value, dtype=np.float64 if value.dtype.kind == "f" else None)
    from runner.api import to_jsonable

    return to_jsonable(value)


def dumps(obj: Any, **json_kwargs: Any) -> bytes:
    """orjson (NaN and infinities as null, like ``to_jsonable``) when installed, else
    ``json.dumps(obj, **json_kwargs)`` with the arrays of :func:`jsonable` as lists."""
    if orjson is not None:
        try:
            return orjson.dumps(obj, default=json_kwargs.get("default"), option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # orjson.JSONEncodeError: e.g. an integer over 64 bits in a request id
            pass
    return json.dumps(_lists(obj), **json_kwargs).encode()


def _lists(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        from runner.api import to_jsonable

        return to_jsonable(obj)
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_lists(v) for v in obj]
    return obj
