"""gpuxc/project/isolation/protocol.py: what the model-isolation child sends back is data, never code (no pickle)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from fixtures import models
from gpuxc.project.isolation import protocol
from gpuxc.project.model import load_model

REPO = Path(__file__).resolve().parents[2]


def test_round_trip_of_every_kind() -> None:
    value = (
        "ok",
        {
            "probs": np.arange(6, dtype=np.float32).reshape(2, 3),
            "ids": np.array([[1, 2]], np.int64),
            "flags": np.array([True, False]),
            "words": np.array([["a", "ü"]], dtype=object),  # ONNX Runtime's string tensors
            "zipmap": [{0: 0.25, 7: 0.75}],  # ZipMap: int64 label keys
            "scalar": np.float16(1.5),
        },
        [None, True, 3, -2.5, float("nan"), float("inf"), b"\x00\xff", Path("a/b.onnx")],
    )
    back = protocol.decode(protocol.encode(value))
    assert back[0] == "ok"
    out = back[1]
    np.testing.assert_array_equal(out["probs"], value[1]["probs"])
    assert out["probs"].dtype == np.float32 and out["ids"].dtype == np.int64 and out["flags"].dtype == bool
    assert out["words"].dtype == object and out["words"].tolist() == [["a", "ü"]]
    assert out["zipmap"] == [{0: 0.25, 7: 0.75}]
    assert out["scalar"] == np.float16(1.5) and out["scalar"].dtype == np.float16
    rest = back[2]
    assert rest[:4] == [None, True, 3, -2.5] and np.isnan(rest[4]) and rest[5] == float("inf")
    assert rest[6:] == [b"\x00\xff", Path("a/b.onnx")]


def test_ml_dtypes_arrays_round_trip() -> None:
    """bfloat16 / float8 / int4 reference inputs have no .npy spelling: they travel by type name."""
    import ml_dtypes

    for kind in (ml_dtypes.bfloat16, ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fn):
        array = np.arange(6, dtype=np.float32).reshape(2, 3).astype(kind)
        back = protocol.decode(protocol.encode({"x": array}))["x"]
        assert back.dtype == array.dtype and back.shape == (2, 3)
        np.testing.assert_array_equal(back.astype(np.float32), array.astype(np.float32))
    forged = protocol.encode({"x": np.zeros(2, ml_dtypes.bfloat16)}).replace(b'"bfloat16"', b'"finfo"')
    with pytest.raises(protocol.ProtocolError):  # only ml_dtypes' scalar types, looked up by name
        protocol.decode(forged)


def test_loaded_model_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    models.save(models.mlp(), path)
    loaded = load_model(path)
    back = protocol.decode(protocol.encode(loaded))
    assert back.proto == loaded.proto and back.signature == loaded.signature and back.path == path


class _Boom:
    def __reduce__(self):  # what a pickle-based channel would run on the receiving side
        return (exec, ("open('owned', 'w')",))


def test_pickles_and_unknown_kinds_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(pickle.dumps(_Boom()))
    with pytest.raises(protocol.ProtocolError):
        protocol.encode(_Boom())
    with pytest.raises(protocol.ProtocolError):
        protocol.encode(np.array([_Boom()], dtype=object))
    forged = protocol.encode({"x": 1}).replace(b'"$map"', b'"$code"')
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(forged)
    # An .npy blob that needs pickle (an object array) is refused by read_array(allow_pickle=False).
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    message = protocol.encode(np.zeros(1))
    header_len = int.from_bytes(message[:4], "big")
    head = message[: 4 + header_len].replace(f"[{len(message) - 4 - header_len}]".encode(),
                                             f"[{len(buffer.getvalue())}]".encode())  # fmt: skip
    with pytest.raises((protocol.ProtocolError, ValueError)):
        protocol.decode(head + buffer.getvalue())
    assert not (tmp_path / "owned").exists()


def test_no_gpuxc_module_uses_pickle() -> None:
    """No pickle anywhere in gpuxc, its plugins or the bundle templates (allow_pickle=False is fine)."""
    offenders = []
    for folder in ("gpuxc", "plugins", "templates"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in (".py", ".j2") or "__pycache__" in path.parts:
                continue
            text = path.read_text(encoding="utf-8")
            if re.search(r"^\s*(import pickle|from pickle import|import cloudpickle|import dill)", text, re.M) or (
                "allow_pickle=True" in text
            ):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
