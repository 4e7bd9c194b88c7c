"""JSON tensors in C (templates/runner/jsontensors.py): pysimdjson decoding and orjson encoding give
exactly what the json-module path gives (arrays bit for bit, the same 400 messages), and that path
still works without either package."""

from __future__ import annotations

import json
import random
import shutil
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from gpuxc.bundle.runner_source import template_root

pytest.importorskip("simdjson", reason="the fast path needs pysimdjson (in the dev extra)")
pytest.importorskip("orjson", reason="the fast path needs orjson (in the dev extra)")


Runner = dict[str, ModuleType]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModuleType]]:
    """The runner package laid out as in a bundle (with ONNX Runtime's adapter), imported, then forgotten."""
    root = tmp_path_factory.mktemp("bundle")
    shutil.copytree(template_root() / "runner", root / "runner", ignore=shutil.ignore_patterns("*.j2"))
    shutil.copy(template_root() / "onnxruntime" / "runtime.py", root / "runner" / "runtime.py")
    sys.path.insert(0, str(root))
    try:
        from runner import inputs, jsontensors, uploads, v2

        yield {"v2": v2, "jsontensors": jsontensors, "uploads": uploads, "inputs": inputs}
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "runner" or m.startswith("runner.")]:
            del sys.modules[name]


def _v2(runner: Runner, body: bytes, specs: dict[str, Any], fast: bool,
        monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:  # fmt: skip
    """('ok', arrays) or ('error', message) for a v2 JSON body, with or without the C packages."""
    v2, jt = runner["v2"], runner["jsontensors"]
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(jt, "simdjson", None)
            patch.setattr(jt, "orjson", None)
        try:
            request, tail = v2.split_body(body, None)
            return "ok", v2.decode_inputs(request, tail, specs)
        except v2.ProtocolError as exc:
            return "error", str(exc)


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    assert a[0] == b[0], (a, b)
    if a[0] == "error":
        assert a[1] == b[1]
        return
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        x, y = a[1][name], b[1][name]
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def _body(datatype: str, shape: list[int], data: Any, **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}], **extra}).encode()


def _spec(dtype: str) -> dict[str, Any]:
    return {"x": {"dtype": dtype, "shape": None}}


RNG = np.random.default_rng(0)
FLOATS = (RNG.standard_normal(2 * 3 * 4) * 10.0 ** RNG.integers(-30, 30, 24)).tolist()  # 17-digit doubles
GOOD = [
    ("FP32", "float32", [2, 3, 4], FLOATS),
    ("FP32", "float32", [2, 3, 4], np.asarray(FLOATS).reshape(2, 3, 4).tolist()),  # nested
    ("FP64", "float64", [24], FLOATS),
    ("FP16", "float16", [6], [0.1, -65504.0, 65519.0, 1e-8, 3, 70000.0]),  # rounding, overflow to inf
    ("FP32", "float32", [5], [1, 2**53 + 1, 2**60 + 2**36 + 1, 2**64 - 1, -(2**63)]),  # ints into floats
    ("INT64", "int64", [3], [-(2**63), 2**63 - 1, 0]),
    ("UINT64", "uint64", [2], [0, 2**64 - 1]),
    ("INT8", "int8", [2, 2], [[-128, 127], [0, 1]]),
    ("UINT8", "uint8", [3], [0, 255, 7]),
    ("INT32", "int32", [0], []),
    ("FP32", "float32", [2, 0], [[], []]),
]


@pytest.mark.parametrize(("datatype", "dtype", "shape", "data"), GOOD)
def test_fast_v2_decoding_gives_the_json_paths_arrays(runner: Runner, monkeypatch: pytest.MonkeyPatch, datatype: str,
                                                      dtype: str, shape: list[int], data: Any) -> None:  # fmt: skip
    body = _body(datatype, shape, data)
    with warnings.catch_warnings():  # FP16 overflow to inf: NumPy warns on both paths
        warnings.simplefilter("ignore", RuntimeWarning)
        request = runner["jsontensors"].v2_request(body)
        assert request is not None and isinstance(request["inputs"][0]["data"], runner["jsontensors"].Dense)
        fast = _v2(runner, body, _spec(dtype), True, monkeypatch)
        slow = _v2(runner, body, _spec(dtype), False, monkeypatch)
    assert fast[0] == "ok"
    _same(fast, slow)


BAD = [
    _body("FP32", [3], [[1, 2], [3]]),  # ragged
    _body("FP32", [3], [[1, 2], 3]),
    _body("FP32", [3], [[1], [2, 3], []]),  # ragged with the element count of its first branch
    _body("FP32", [2], [1, [2]]),  # an array at the last level: as_buffer would flatten it
    _body("FP32", [4], [[1, [2]], [3, 4]]),
    _body("FP32", [4], [[[], 1], [2, 3]]),
    _body("FP32", [2], [[2], 3], id="\\u005b"),
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, [2]]}], "id": "\\u005b"}',
    _body("FP32", [2], [1, None]),
    _body("FP32", [2], [1, "2"]),
    _body("FP32", [2], [1, True]),
    _body("FP32", [2], [1, {"a": 2}]),
    _body("FP32", [3], [1, 2]),  # element count
    _body("INT64", [2], [1, 1.5]),  # non-integer for an integer tensor
    _body("INT64", [2], [1, 2.0]),
    _body("INT64", [2], [1, 2**63]),
    _body("INT8", [2], [1, 300]),
    _body("UINT8", [2], [1, -1]),
    _body("UINT64", [2], [1, -1]),
    _body("BOOL", [2], [True, False]),
    _body("FP16", [2], [1, 2]),  # datatype the model does not take
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e400]}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [123456789012345678901234567890]}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "inputs": []}',  # duplicate key
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "data": [1, 2]}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]',  # truncated
    b'[1, 2]',
    b'{"inputs": {}}',
    b"\xef\xbb\xbf" + _body("FP32", [1], [1]),  # a UTF-8 byte order mark: json.loads takes it
]


@pytest.mark.parametrize("body", BAD, ids=range(len(BAD)))
def test_fast_v2_decoding_fails_or_succeeds_as_the_json_path_does(
        runner: Runner, body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    specs = _spec("float32" if b"FP" in body else _int_dtype(body))
    _same(_v2(runner, body, specs, True, monkeypatch), _v2(runner, body, specs, False, monkeypatch))


def _int_dtype(body: bytes) -> str:
    for datatype, dtype in (("UINT64", "uint64"), ("UINT8", "uint8"), ("INT64", "int64"), ("INT8", "int8"),
                            ("BOOL", "bool")):  # fmt: skip
        if datatype.encode() in body:
            return dtype
    return "float32"


def test_random_malformed_bodies_give_the_json_paths_answer(runner: Runner,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Mutated bodies: never anything but a ProtocolError, and always the slow path's result."""
    rnd = random.Random(16)
    seeds = [_body("FP32", [2, 3], [[1.5, -2, 3e-3], [4, 5, 6]]), _body("INT64", [4], [1, -2, 3, 2**62])]
    pieces = [b"[", b"]", b",", b"1", b"-", b".", b"e", b'"', b"{", b"}", b"true", b"null", b" ", b"1.5", b"\\"]
    for _ in range(400):
        body = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(len(body))
            action = rnd.random()
            if action < 0.4:
                body[at:at] = rnd.choice(pieces)
            elif action < 0.7:
                del body[at:at + rnd.randint(1, 3)]
            else:
                body[at] = rnd.randrange(256)
        dtype = "int64" if b"INT64" in body else "float32"
        with warnings.catch_warnings():  # a mutation can make 1e39 (float32 overflow): both paths warn
            warnings.simplefilter("ignore", RuntimeWarning)
            _same(_v2(runner, bytes(body), _spec(dtype), True, monkeypatch),
                  _v2(runner, bytes(body), _spec(dtype), False, monkeypatch))  # fmt: skip


def _predict(runner: Runner, body: bytes, dtype: str, fast: bool,
             monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:  # fmt: skip
    """/predict JSON through uploads and the runner's input checks: ('ok', feeds) or ('error', message)."""
    uploads, jt, inputs = runner["uploads"], runner["jsontensors"], runner["inputs"]
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(jt, "simdjson", None)
        try:
            data = uploads._json_inputs(body, None, "", {"x": dtype})
            return "ok", inputs.InputChecks([{"name": "x", "dtype": dtype, "shape": None}]).prepare(data)
        except uploads.UploadError as exc:
            return "error", f"{exc.status} {exc.error} {exc.message} {exc.details}"
        except inputs.InputError as exc:
            return "error", str(exc)


PREDICT = [
    ("float32", np.asarray(FLOATS).reshape(1, 2, 3, 4).tolist(), True),
    ("float32", [[1, 2], [3, 2**60 + 2**36 + 1]], True),  # all integers: NumPy makes int64, then float32
    ("float32", [[1, 2.5], [3, 4]], True),
    ("float32", [[1.5, 2], [3, 4]], True),
    ("float16", [[1e-8, 65519.0]], True),
    ("int64", [[-(2**63), 2**63 - 1]], True),
    ("int32", [[1, 2], [3, 4]], True),
    ("uint8", [[1, 300]], True),  # out of range: the runner's own message
    ("float32", [[], []], True),
    ("float32", [[1, 2], [3]], False),
    ("float32", [[1], [2, 3], []], False),
    ("float32", [[1, [2]], [3, 4]], False),
    ("float32", [[1, 2**63]], False),  # NumPy: uint64
    ("float32", [[1, True]], False),
    ("int64", [[1, 2.0]], False),
    ("int64", [[1, 2.5]], False),
    ("int64", [[1.5, 2]], False),
    ("bool", [[True, False]], False),
    ("float32", 3.5, False),
]


@pytest.mark.parametrize(("dtype", "value", "fast"), PREDICT, ids=range(len(PREDICT)))
def test_predict_json_gives_the_json_paths_feeds(runner: Runner, monkeypatch: pytest.MonkeyPatch,
                                                 dtype: str, value: Any, fast: bool) -> None:  # fmt: skip
    for body in (json.dumps({"x": value}).encode(), json.dumps({"inputs": {"x": value}}).encode()):
        with warnings.catch_warnings():  # float16 overflow warns on both paths
            warnings.simplefilter("ignore", RuntimeWarning)
            decoded = runner["jsontensors"].predict_request(body, {"x": dtype})
            inner = decoded and decoded.get("inputs", decoded)
            assert isinstance(inner and inner["x"], np.ndarray) == fast
            _same(_predict(runner, body, dtype, True, monkeypatch), _predict(runner, body, dtype, False, monkeypatch))


@pytest.mark.parametrize("body", [b'{"x": [1, 2', b'{"x": [1, 2], "x": [3]}', b"[]", b'{"x": [NaN]}', b""])
def test_predict_json_errors_are_the_json_paths(runner: Runner, monkeypatch: pytest.MonkeyPatch,
                                                body: bytes) -> None:  # fmt: skip
    _same(_predict(runner, body, "float32", True, monkeypatch), _predict(runner, body, "float32", False, monkeypatch))


OUTPUTS = {
    "logits": np.array([[0.1, np.nan, np.inf, -np.inf, 1e-30]], np.float32),
    "half": np.array([1.5, 65504], np.float16),
    "ids": np.array([[-(2**63), 2**63 - 1]], np.int64),
    "big": np.array([2**64 - 1], np.uint64),
    "flags": np.array([True, False]),
    "scalar": np.array(2.5, np.float64),
    "empty": np.zeros((2, 0), np.float32),
    "strided": np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2],
    "text": np.array(["a", "b"]),
}


def test_v2_responses_read_the_same_with_orjson(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    v2, jt = runner["v2"], runner["jsontensors"]
    request = {"id": "r1", "outputs": [{"name": n, "parameters": {"binary_data": n == "ids"}} for n in OUTPUTS]}
    fast, fast_len = v2.encode_response("m", "1", OUTPUTS, {}, request)
    monkeypatch.setattr(jt, "orjson", None)
    slow, slow_len = v2.encode_response("m", "1", OUTPUTS, {}, request)
    assert json.loads(fast[:fast_len]) == json.loads(slow[:slow_len])
    assert fast[fast_len:] == slow[slow_len:] == OUTPUTS["ids"].astype("<i8").tobytes()


def test_predict_replies_read_the_same_with_orjson(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    jt = runner["jsontensors"]
    kwargs: dict[str, Any] = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}

    def reply() -> bytes:
        body = {name: jt.jsonable(value) for name, value in OUTPUTS.items()}
        body["ranked"] = {"logits": [[{"label": "é", "score": 0.5}]]}
        return jt.dumps(body, **kwargs)

    fast = reply()
    assert b"null" in fast and "é".encode() in fast
    monkeypatch.setattr(jt, "orjson", None)
    assert json.loads(fast) == json.loads(reply())


def test_binary_tensors_are_views_of_the_body_that_runtimes_take(runner: Runner) -> None:
    """No copy between the request body and the runtime: ONNX Runtime and OpenVINO both run on the
    read-only view (OpenVINO copies read-only inputs itself) and give the writable array's result."""
    import onnxruntime as ort
    import openvino as ov

    from fixtures import models

    v2 = runner["v2"]
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()  # fmt: skip
    body = header + x.tobytes()
    request, tail = v2.split_body(body, str(len(header)))
    array = v2.decode_inputs(request, tail, {"image": {"dtype": "float32"}})["image"]
    assert np.shares_memory(array, np.frombuffer(body, np.uint8)) and not array.flags.writeable
    model = models.tiny_cnn(dynamic_spatial=True).SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"image": array})[0], session.run(None, {"image": x})[0])
    compiled = ov.Core().compile_model(ov.Core().read_model(model, b""), "CPU")
    request_ov = compiled.create_infer_request()
    got = request_ov.infer({0: array}, share_inputs=True)[0].copy()
    assert np.array_equal(got, request_ov.infer({0: x}, share_inputs=True)[0])


def test_bundles_serve_requirements_pin_the_fast_path_packages() -> None:
    import importlib.metadata

    from gpuxc.bundle.requirements import serve_requirements

    lines = serve_requirements(None)
    for dist in ("pysimdjson", "orjson", "httptools"):
        assert f"{dist}=={importlib.metadata.version(dist)}" in lines
