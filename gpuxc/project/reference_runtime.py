"""Which runtime computes the reference outputs: the first of ONNX Runtime, OpenVINO, ONNX's reference.

Verification compares every artifact with the *source* model's outputs. ONNX Runtime computes
them when it can run the source; when it cannot (operators from opsets below 7 it no longer
implements, ops outside its kernels), OpenVINO runs the source (it still reads old opsets), then
``onnx.reference.ReferenceEvaluator`` (ONNX's own implementation of every standard op: slow, but
needs no kernels). The runtime used, and why the ones before it could not, are recorded in the
manifest (``reference.runtime``, ``reference.fallbacks``). A source no runtime can run is an
error: gpuxc never verifies a converted model against itself.

Only a failure to *load* the source (or a NOT_IMPLEMENTED kernel) moves on to the next runtime;
a run that fails on the inputs (a wrong shape) is the user's to fix and is reported as it is.
Each runtime runs in an isolated child (gpuxc/project/isolation): the source is untrusted.

A fallback reference is cross-checked. OpenVINO is less trodden as a reference than ONNX Runtime
and, for the openvino target, the very runtime the artifact runs on: a bug of its own would pass
verification unseen. Measured on ONNX's node cases, it computes GRU/LSTM with ``layout=1`` wrong
(ONNX Runtime refuses those models). So when OpenVINO produced the reference, ``onnx.reference``
runs the source too, within CROSS_CHECK_SECONDS; if the two disagree beyond the fp32 tolerance the
build stops (gpuxc cannot tell which is right); if ``onnx.reference`` cannot run it (it lacks some
legacy semantics, e.g. ``PRelu-6``'s per-channel slope) or runs out of time, the manifest says so.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpuxc.errors import GpuxcError, ModelLimitExceeded, ReferenceError_, first_line

ONNXRUNTIME, OPENVINO, ONNX_REFERENCE = "onnxruntime", "openvino", "onnx.reference"
RUNTIMES = (ONNXRUNTIME, OPENVINO, ONNX_REFERENCE)
# Measured (benchmarks/conformance.py): OpenVINO returned wrong numbers for float64 models
# (it computes in f32); ONNX's reference implementation is exact there.
OPENVINO_WRONG_DTYPES = {"float64"}
# onnx.reference is pure NumPy: a cross-check that would take longer is skipped (and said so).
CROSS_CHECK_SECONDS = 120.0


@dataclass
class ReferenceRun:
    outputs: dict[str, np.ndarray]
    runtime: str
    fallbacks: list[str] = field(default_factory=list)  # "onnxruntime: <why it could not>", in order
    cross_check: str | None = None  # a fallback reference checked against onnx.reference: the outcome


def run_reference(path: Path, inputs: dict[str, np.ndarray], io_dtypes: set[str],
                  runtime: str | None = None) -> ReferenceRun:  # fmt: skip
    """The source model at ``path`` on ``inputs``, by the first runtime that can run it.

    ``runtime`` pins one (the extra samples use the reference's). ``io_dtypes`` are the graph's
    input and output dtypes (OpenVINO is skipped for those it gets wrong).
    """
    if runtime is not None:
        return ReferenceRun(_RUNNERS[runtime](path, inputs), runtime)
    fallbacks: list[str] = []
    first: GpuxcError | None = None
    for name in RUNTIMES:
        why_not = _why_not(name, io_dtypes)
        if why_not:
            fallbacks.append(f"{name}: {why_not}")
            continue
        try:
            outputs = _RUNNERS[name](path, inputs)
        except ModelLimitExceeded:
            raise  # the next runtime would need the same memory or time
        except GpuxcError as exc:
            if name == ONNXRUNTIME and not _cannot_run(exc):
                raise  # the inputs, not the runtime: every runtime would fail the same way
            first = first or exc
            fallbacks.append(f"{name}: {_headline(exc)}")
            continue
        return ReferenceRun(outputs, name, fallbacks, _cross_check(name, path, inputs, outputs))
    assert first is not None
    # ONNX Runtime's own error (its class keeps its exit code), with why the others could not either.
    others = "; ".join(f for f in fallbacks if not f.startswith(ONNXRUNTIME))
    hint = first.hint or "gpuxc verifies every bundle against the source model's outputs: one runtime must run it"
    raise type(first)(f"{first.message} (no other runtime could run the source either: {others})", hint=hint)


def _cross_check(name: str, path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> str | None:
    """OpenVINO's reference against onnx.reference: agreement noted, disagreement an error."""
    if name != OPENVINO:
        return None
    from gpuxc.bundle.compare import DEFAULT_TOLERANCE, compare

    try:
        other = _onnx_reference(path, inputs, clock=CROSS_CHECK_SECONDS)
    except GpuxcError as exc:
        return f"not cross-checked: {_headline(exc)}"
    report = compare(other, outputs, DEFAULT_TOLERANCE["fp32"])
    if report["status"] != "passed":
        raise ReferenceError_(
            f"OpenVINO and onnx.reference disagree on the source model's outputs ({report['failures'][0]}), "
            "and ONNX Runtime cannot run it: gpuxc cannot tell which reference is right",
            hint="re-export the model at an opset ONNX Runtime runs, or report the difference to OpenVINO/ONNX",
        )
    return "onnx.reference agrees"


def _headline(exc: GpuxcError) -> str:
    return exc.message.splitlines()[0] if exc.message else type(exc).__name__


def _why_not(name: str, io_dtypes: set[str]) -> str | None:
    if name == OPENVINO:
        if importlib.util.find_spec("openvino") is None:
            return "not installed (pip install gpuxc[openvino])"
        wrong = sorted(io_dtypes & OPENVINO_WRONG_DTYPES)
        if wrong:
            return f"skipped for {', '.join(wrong)} tensors (it computes them in float32)"
    return None


def _cannot_run(exc: GpuxcError) -> bool:
    """ONNX Runtime failed on the model itself (load, crash, missing kernel), not on the inputs."""
    return not isinstance(exc, ReferenceError_) or "NOT_IMPLEMENTED" in exc.message


def _onnxruntime(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from gpuxc.project import isolation

    return isolation.run_onnxruntime(path, inputs)


def _openvino(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from gpuxc.project import isolation

    return isolation.run_isolated("run_openvino", path, inputs, model_path=path,
                                  first_stage=("OpenVINO", "reading the model"))  # fmt: skip


def _onnx_reference(path: Path, inputs: dict[str, np.ndarray], clock: float | None = None) -> dict[str, np.ndarray]:
    from gpuxc.project import isolation

    return isolation.run_isolated("run_onnx_reference", path, inputs, model_path=path,
                                  first_stage=("onnx.reference", "loading the model"), clock=clock)  # fmt: skip


_RUNNERS = {ONNXRUNTIME: _onnxruntime, OPENVINO: _openvino, ONNX_REFERENCE: _onnx_reference}


# -- the steps themselves (run inside the isolated child; see gpuxc/project/isolation/steps.py) ----


def openvino_outputs(path: Path, inputs: dict[str, np.ndarray], on_stage: Any = None) -> dict[str, np.ndarray]:
    """OpenVINO (CPU, f32 precision: never the host's bf16 default) on the model file."""
    import onnx
    import openvino as ov

    stage = on_stage or (lambda _doing: None)
    names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as exc:
        raise ReferenceError_(f"OpenVINO cannot load the model: {first_line(exc)}") from None
    stage("running the reference inputs")
    try:
        result = compiled(inputs)
    except Exception as exc:
        raise ReferenceError_(f"OpenVINO failed on the reference inputs: {first_line(exc)}") from None
    return {name: np.asarray(result[port]) for name, port in zip(names, compiled.outputs, strict=True)}


def onnx_reference_outputs(path: Path, inputs: dict[str, np.ndarray], on_stage: Any = None) -> dict[str, np.ndarray]:
    """``onnx.reference.ReferenceEvaluator`` on the model file (external data already contained)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    stage = on_stage or (lambda _doing: None)
    model = onnx.load(str(path))
    try:
        evaluator = ReferenceEvaluator(model)
    except Exception as exc:
        raise ReferenceError_(f"onnx.reference cannot load the model: {first_line(exc)}") from None
    stage("running the reference inputs")
    try:
        values = evaluator.run(None, inputs)
    except Exception as exc:
        raise ReferenceError_(f"onnx.reference failed on the reference inputs: {first_line(exc)}") from None
    return {o.name: np.asarray(v) for o, v in zip(model.graph.output, values, strict=True)}
