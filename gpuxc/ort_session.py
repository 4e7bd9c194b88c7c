"""Running a model on ONNX Runtime in this process: the one place gpuxc opens a session for it.

The reference outputs (on the source model), compile-time verification of the ONNX-file
targets, and the passes that check their own output all run models through here, so
session options, the quiet log level and the error wording are the same everywhere. The
isolated variant (first touch of an untrusted model, in a child process) is
``gpuxc.project.isolation.run_onnxruntime``, which calls :func:`run_onnxruntime` in the child.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuxc.errors import GpuxcError, ModelError, ReferenceError_, first_line

if TYPE_CHECKING:
    import onnxruntime

LEVELS = ("none", "basic", "all")
CPU = ["CPUExecutionProvider"]


def open_session(
    model: Path | str | bytes,
    *,
    providers: Sequence[str] | None = None,
    level: str = "all",
    log_level: int = 4,
    settings: dict[str, Any] | None = None,
) -> onnxruntime.InferenceSession:
    """A session on ``model`` (a file path or serialized bytes). ``settings`` are the thread and
    execution-mode settings an artifact records (``intra_op_threads``, ``inter_op_threads``,
    ``execution_mode``), applied as the bundle's runner applies them. ONNX Runtime's exceptions
    propagate: each caller words its own error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_level
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if settings is not None:
        options.intra_op_num_threads = int(settings.get("intra_op_threads", 0))
        options.inter_op_num_threads = int(settings.get("inter_op_threads", 0))
        if settings.get("execution_mode") == "parallel":
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=list(providers or CPU))


def run_onnxruntime(
    model: Path | bytes,
    inputs: dict[str, np.ndarray],
    providers: Sequence[str] | None = None,
    level: str = "all",
    on_stage: Callable[[str], None] | None = None,
    *,
    log_level: int = 4,
    load_error: type[GpuxcError] = ModelError,
    run_error: Callable[[str], GpuxcError] | None = None,
    what: str = "the reference inputs",
) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``inputs``; its outputs by name, as NumPy arrays.

    ``on_stage`` hears "creating a session" and "running the reference inputs" (the isolation
    helper names the stage a crashed child was in). A model ONNX Runtime cannot load is
    ``load_error``; a failed run on ``what`` is ``run_error(message)`` (default: a
    ``ReferenceError_`` with a hint on input shapes).
    """
    if on_stage is not None:
        on_stage("creating a session")
    try:
        session = open_session(model, providers=providers, level=level, log_level=log_level)
    except Exception as exc:
        raise load_error(f"ONNX Runtime cannot load the model: {first_line(exc)}") from None
    if on_stage is not None:
        on_stage("running the reference inputs")
    try:
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, inputs)
    except Exception as exc:
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items())
        message = f"ONNX Runtime failed on {what} ({shapes}): {first_line(exc)}"
        raise (run_error or _reference_error)(message) from None
    return dict(zip(names, (np.asarray(v) for v in values), strict=False))


def _reference_error(message: str) -> GpuxcError:
    return ReferenceError_(message, hint="give input shapes with build.shapes or inputs.<name>.shape in gpux.yml")
