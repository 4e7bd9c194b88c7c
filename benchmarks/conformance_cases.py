"""The test cases of benchmarks/conformance.py: ONNX's own, written to disk in one layout.

Two sources, both from the installed ``onnx`` package (no download):

- ``node``: ``onnx.backend.test.case.node`` builds one model per operator case in code, with
  inputs and expected outputs (NumPy reference implementations).
- ``data``: the model folders shipped in ``onnx/backend/test/data`` (``simple``,
  ``pytorch-converted``, ``pytorch-operator``: ``model.onnx`` + ``test_data_set_N/*.pb``) and the
  ``light`` model-zoo networks (ResNet, SqueezeNet, Inception, ...: old IR, old opsets, weights
  built by ``ConstantOfShape``) whose inputs ONNX's runner generates and whose expected outputs
  it ships. ``--cases DIR`` reads any folder in the first layout the same way.

Only tensor-in/tensor-out cases are kept (a bundle takes and returns tensors); each is written
as ``<work>/<suite>/<name>/``: ``model.onnx``, ``inputs.npz``, ``expected.npz``, ``case.json``
(tolerances and the operators the model uses).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ONNX_DATA = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"
DATA_FOLDERS = ("simple", "pytorch-converted", "pytorch-operator")
# ONNX's own runner compares with these unless a case says otherwise.
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-7


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL


# Element types NumPy has no dtype for (without ml_dtypes): no .npz holds them, no bundle takes them.
EXOTIC_TYPES = {
    getattr(onnx.TensorProto, name)
    for name in ("BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0",
                 "FLOAT4E2M1", "INT4", "UINT4", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, name)
}  # fmt: skip
# Cases left out, by why: reported under the tables.
left_out: Counter[str] = Counter()


def tensor_io(model: onnx.ModelProto) -> bool:
    """Every graph input and output is a tensor (no sequences, maps or optionals) of a NumPy type."""
    values = list(model.graph.input) + list(model.graph.output)
    if not all(v.type.HasField("tensor_type") for v in values):
        left_out["sequence, map or optional inputs or outputs"] += 1
        return False
    if any(v.type.tensor_type.elem_type in EXOTIC_TYPES for v in values):
        left_out["float8/float4/int4/bfloat16 inputs or outputs (no NumPy dtype)"] += 1
        return False
    return True


def user_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def node_cases() -> Iterator[Case]:
    import warnings

    from onnx.backend.test.case import node

    with warnings.catch_warnings():  # the case generators overflow casts on purpose
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    for case in cases:
        if case.model is None or not case.data_sets or not tensor_io(case.model):
            continue
        inputs, outputs = case.data_sets[0]
        yield Case(
            case.name,
            case.model,
            _named(user_inputs(case.model), inputs),
            _named(list(case.model.graph.output), outputs),
            case.rtol,
            case.atol,
        )


def folder_cases(folder: Path) -> Iterator[Case]:
    """``folder/<case>/model.onnx`` with ``test_data_set_0/{input,output}_K.pb``."""
    for case_dir in sorted(p for p in folder.iterdir() if (p / "model.onnx").is_file()):
        model = onnx.load(str(case_dir / "model.onnx"))
        data = case_dir / "test_data_set_0"
        if not tensor_io(model) or not data.is_dir():
            continue
        meta = _data_json(case_dir)
        yield Case(
            f"{folder.name}/{case_dir.name}",
            model,
            _named(user_inputs(model), _read_tensors(data, "input")),
            _named(list(model.graph.output), _read_tensors(data, "output")),
            meta.get("rtol", DEFAULT_RTOL),
            meta.get("atol", DEFAULT_ATOL),
        )


def light_cases() -> Iterator[Case]:
    """The model-zoo networks of ``data/light``: inputs as ONNX's runner makes them (arange / n)."""
    for path in sorted((ONNX_DATA / "light").glob("light_*.onnx")):
        model = onnx.load(str(path))
        inputs = {}
        for value in user_inputs(model):
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim)
            n = int(np.prod(shape))
            inputs[value.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
        outputs = [numpy_helper.to_array(onnx.load_tensor(str(p)))
                   for p in sorted(path.parent.glob(f"{path.stem}_output_*.pb"))]  # fmt: skip
        if len(outputs) != len(model.graph.output):
            continue
        meta = _data_json(ONNX_DATA / "real" / f"test_{path.stem.removeprefix('light_')}")
        yield Case(f"light/{path.stem}", model, inputs, _named(list(model.graph.output), outputs),
                   meta.get("rtol", DEFAULT_RTOL), meta.get("atol", DEFAULT_ATOL))  # fmt: skip


def data_cases(extra: list[Path]) -> Iterator[Case]:
    for name in DATA_FOLDERS:
        yield from folder_cases(ONNX_DATA / name)
    yield from light_cases()
    for folder in extra:
        yield from folder_cases(folder)


def write_case(case: Case, root: Path) -> Path:
    """The case as files under ``root`` (skipped when already there: the node cases take a while)."""
    where = root / re.sub(r"[^A-Za-z0-9_.-]+", "_", case.name)
    if (where / "case.json").is_file():
        return where
    where.mkdir(parents=True, exist_ok=True)
    onnx.save(case.model, str(where / "model.onnx"))
    np.savez(where / "inputs.npz", **case.inputs)
    np.savez(where / "expected.npz", **case.expected)
    nodes = case.model.graph.node
    ops = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}" for n in nodes})
    opset = next((o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx")), None)
    meta = {"name": case.name, "rtol": case.rtol, "atol": case.atol, "ops": ops, "opset": opset,
            "ir_version": case.model.ir_version}  # fmt: skip
    (where / "case.json").write_text(json.dumps(meta), encoding="utf-8")
    return where


def _named(values: list[onnx.ValueInfoProto], arrays: list[object]) -> dict[str, np.ndarray]:
    out = {}
    for value, array in zip(values, arrays, strict=False):
        if isinstance(array, onnx.TensorProto):
            array = numpy_helper.to_array(array)
        array = np.asarray(array)
        # Strings arrive as object arrays, which only pickle could store: keep them as str.
        out[value.name] = array.astype(str) if array.dtype == object else array
    return out


def _read_tensors(folder: Path, kind: str) -> list[np.ndarray]:
    paths = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
    return [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in paths]


def _data_json(case_dir: Path) -> dict[str, float]:
    path = case_dir / "data.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
