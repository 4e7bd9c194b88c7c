"""What an isolated child may be asked to run, by name: a message names a step, it never carries code.

Runs inside the child (gpuxc/project/isolation/helper.py forks it); in process when isolation is
off. A step reports the stage it is in with :func:`stage`, so that a child that dies is named
with what it was doing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuxc.project.isolation import protocol

if TYPE_CHECKING:
    from gpuxc.project.model import LoadedModel

# A loaded model up to this size comes back from the child whole; a bigger one is loaded again
# in process (the same deterministic steps the child just finished).
SEND_BACK_BYTES = 256 << 20

# Set by the helper in each child (never in the caller's process): where stage() writes, and
# GPUXC_ISOLATION_TEST_FAULT as the caller read it.
stage_fd: int | None = None
child_fault: str | None = None


def stage(library: str, doing: str) -> None:
    """Record, from inside a step, what it is doing now (named if the child dies); a no-op in process."""
    if stage_fd is not None:
        protocol.write_frame(stage_fd, protocol.encode(("stage", library, doing)))


def fault_if_asked(step: str) -> None:
    """GPUXC_ISOLATION_TEST_FAULT=abort|segv[:load|:run], read in the parent: crash like a native bug."""
    fault = child_fault
    if not fault:
        return
    kind, _, where = fault.partition(":")
    if where and where != step:
        return
    if kind == "abort":
        os.abort()
    elif kind == "segv":
        import ctypes

        ctypes.string_at(0)


def load_step(path: Path) -> LoadedModel | None:
    """:func:`gpuxc.project.model.load_model`; None when the result is too big to send back."""
    from gpuxc.project import model

    fault_if_asked("load")
    loaded = model.load_model(path)
    return loaded if loaded.proto.ByteSize() <= SEND_BACK_BYTES else None


def run_step(path: Path, inputs: dict[str, Any], providers: list[str] | None, level: str) -> dict[str, Any]:
    """:func:`gpuxc.ort_session.run_onnxruntime`, reporting its stages."""
    from gpuxc import ort_session

    def on_stage(doing: str) -> None:
        stage("ONNX Runtime", doing)
        if doing == "creating a session":
            fault_if_asked("run")

    return ort_session.run_onnxruntime(path, inputs, providers, level, on_stage=on_stage)


def openvino_step(path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """The source on OpenVINO: the reference when ONNX Runtime cannot run it."""
    from gpuxc.project import reference_runtime

    stage("OpenVINO", "reading the model")
    fault_if_asked("run")
    return reference_runtime.openvino_outputs(path, inputs, on_stage=lambda doing: stage("OpenVINO", doing))


def onnx_reference_step(path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """The source on ``onnx.reference``: the reference when neither ONNX Runtime nor OpenVINO can run it."""
    from gpuxc.project import reference_runtime

    stage("onnx.reference", "loading the model")
    fault_if_asked("run")
    return reference_runtime.onnx_reference_outputs(path, inputs, on_stage=lambda doing: stage("onnx.reference", doing))


STEPS: dict[str, Callable[..., Any]] = {
    "load": load_step,
    "run": run_step,
    "run_openvino": openvino_step,
    "run_onnx_reference": onnx_reference_step,
    "pid": os.getpid,
}
