"""The first touches of an untrusted model run in a child process, under a memory limit and a clock.

Loading a model (protobuf, ``onnx.checker``, shape inference) and its first ONNX Runtime
session and run are native code fed with bytes the model's author chose. A bug there is a
segfault or an abort, and a model can ask ONNX Runtime for any amount of memory (a
``ConstantOfShape`` of a huge shape). Run in the compiler's own process, either ends the CLI
without a word, or swaps and brings in the OOM killer. Here each step runs in a fresh child:

- the child is forked from a helper process (a small fork server, started on first use and
  kept for the life of the caller) that has NumPy, onnx, ONNX Runtime and gpuxc's model code
  imported and warmed up, and no threads but the libraries' idle ones: a call costs a fork
  (~4 ms, ~10 ms with a small model's load or run), not an interpreter start (~0.5 s). Not
  multiprocessing's forkserver: its children re-run the caller's ``__main__`` script, which an
  unguarded script calling gpuxc cannot survive, and plain fork copies the caller's threads' locks;
- the child sets ``RLIMIT_AS`` to ``$GPUXC_MODEL_MEMORY_LIMIT`` (default: this machine's
  physical memory, or the cgroup's limit when lower) and sends its stdout/stderr to a file, so
  native libraries' messages never reach the terminal;
- the caller waits at most ``$GPUXC_MODEL_TIMEOUT`` seconds (default 900) and then kills it;
- the child reports the stage it is in (``creating a session``...), then its result or the
  gpuxc error it raised; a child that dies instead becomes one line naming the model, the
  stage and the signal: :class:`ModelCrashed` (exit 15), or :class:`ModelLimitExceeded`
  (exit 16) for the memory limit, the clock, or an out-of-memory kill.

The package: this module is the public API (:func:`load_model`, :func:`run_onnxruntime`,
:func:`run_isolated`, the settings of ``settings.py``); ``steps.py`` is what a child may run,
``helper.py`` the fork server and its children, ``protocol.py`` the data-only messages between them.

This contains crashes and resource exhaustion. It is not a sandbox: the child runs with the
user's rights and can read what the user can (external data containment is enforced before,
by gpuxc/project/model_safety.py). Linux only; elsewhere, or with ``GPUXC_ISOLATION=0``, the steps run in
process with no limits. ``GPUXC_ISOLATION_TEST_FAULT=abort|segv[:load|:run]`` makes the child
crash at the start of a step: a test hook, since no model is known to crash ONNX Runtime.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuxc import errors
from gpuxc.errors import GpuxcError, ModelCrashed, ModelLimitExceeded
from gpuxc.project.isolation import helper, protocol, steps
from gpuxc.project.isolation.settings import (
    DEFAULT_TIMEOUT_S,
    FAULT_ENV,
    ISOLATION_ENV,
    MEMORY_ENV,
    TIMEOUT_ENV,
    enabled,
    memory_limit,
    physical_memory,
    timeout_s,
)
from gpuxc.sizes import format_size_binary

if TYPE_CHECKING:
    import numpy as np

    from gpuxc.project.model import LoadedModel

__all__ = [
    "DEFAULT_TIMEOUT_S", "FAULT_ENV", "ISOLATION_ENV", "MEMORY_ENV", "TIMEOUT_ENV",
    "enabled", "load_model", "memory_limit", "physical_memory", "run_isolated", "run_onnxruntime", "timeout_s",
]  # fmt: skip

_lock = threading.Lock()  # one job at a time per process: the helper runs one child at a time


# -- the two steps of a compile --------------------------------------------------------------------


def load_model(path: Path) -> LoadedModel:
    """:func:`gpuxc.project.model.load_model` (parse, checks, shape inference) in a child process.

    The entry point for a model from the user (untrusted input): a crash or a runaway allocation
    in the native code becomes a one-line ModelError, not a dead CLI.
    """
    from gpuxc.project import model

    loaded = run_isolated("load", Path(path), model_path=Path(path), first_stage=("onnx", "loading the model"))
    return loaded if loaded is not None else model.load_model(path)


def run_onnxruntime(path: Path, inputs: dict[str, np.ndarray], providers: list[str] | None = None,
                    level: str = "all") -> dict[str, np.ndarray]:  # fmt: skip
    """:func:`gpuxc.ort_session.run_onnxruntime` on a model file (session and first run) in a child process."""
    return run_isolated("run", Path(path), inputs, providers, level, model_path=Path(path),
                        first_stage=("ONNX Runtime", "creating a session"))  # fmt: skip


# -- running a step in a child ---------------------------------------------------------------------


def run_isolated(step: str, *args: Any, model_path: Path, first_stage: tuple[str, str],
                 clock: float | None = None) -> Any:  # fmt: skip
    """``STEPS[step](*args)`` in a child process (in process when :func:`enabled` is false).

    Arguments and results travel as plain data (gpuxc/project/isolation/protocol.py, never as code); a
    :class:`GpuxcError` the step raises comes back as its class name and message; a child that
    dies, goes over the memory limit or the clock becomes a one-line ModelError. ``clock`` (seconds)
    bounds this step more tightly than ``$GPUXC_MODEL_TIMEOUT``.
    """
    if step not in steps.STEPS:
        raise ValueError(f"unknown isolated step {step!r}")
    if not enabled():
        return steps.STEPS[step](*args)
    limit, default_clock = memory_limit(), timeout_s()
    if clock is None or (default_clock is not None and default_clock < clock):
        clock = default_clock
    fault = os.environ.get(FAULT_ENV) or None
    with _lock:
        server = helper.get_server()
        try:
            status, data, tail, timed_out = server.call((step, list(args), limit, fault), clock)
        except protocol.ProtocolError as exc:
            raise errors.ModelError(f"{model_path.name}: cannot hand the model's data to the isolated "
                                    f"process ({exc})") from None  # fmt: skip
        except helper.ServerGone:
            helper.drop_server(server)  # the next call starts a new helper
            raise ModelCrashed(f"{model_path.name}: gpuxc's isolation helper died while {first_stage[1]}; "
                               "the model may be malformed") from None  # fmt: skip
        except BaseException:  # Ctrl-C: closing the helper ends the child too
            helper.drop_server(server)
            raise
    return _outcome(model_path.name, first_stage, status, data, tail, timed_out, limit, clock)


def _outcome(name: str, stage: tuple[str, str], status: int, data: bytes, tail: str, timed_out: bool,
             limit: int | None, clock: float | None) -> Any:  # fmt: skip
    final = None
    for frame in protocol.split_frames(data):
        if frame[0] == "stage":
            stage = (frame[1], frame[2])
        else:
            final = frame
    library, doing = stage
    # A child that finished just as the clock ran out was not killed: its result stands.
    timed_out = timed_out and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    memory_hint = f"raise {MEMORY_ENV} (bytes or e.g. 32GiB; 0: no limit) if the model really needs more"
    limit_text = f"the memory limit of {format_size_binary(limit)} ({MEMORY_ENV})" if limit else "the available memory"
    if timed_out:
        raise ModelLimitExceeded(f"{name}: {library} took longer than {clock:g} s while {doing} ({TIMEOUT_ENV})",
                                 hint=f"raise {TIMEOUT_ENV} (seconds; 0: no limit) for a model this big")  # fmt: skip
    if final is not None:
        kind = final[0]
        if kind == "ok":
            return final[1]
        if kind == "error":
            cls = getattr(errors, str(final[1]), None)  # a class of gpuxc.errors, by name
            if not (isinstance(cls, type) and issubclass(cls, GpuxcError)):
                cls = errors.ModelError
            raise cls(final[2], hint=final[3])
        if kind == "memory":
            raise ModelLimitExceeded(f"{name}: {library} exceeded {limit_text} while {doing}", hint=memory_hint)
        # An exception no gpuxc code turned into a GpuxcError, raised by a library fed this model.
        raise errors.ModelError(f"{name}: {library} failed while {doing}: {final[1]}")
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        signame = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
        if signum == signal.SIGKILL:
            raise ModelLimitExceeded(f"{name}: {library} was killed (SIGKILL) while {doing}, most likely by the "
                                     "out-of-memory killer", hint=memory_hint)  # fmt: skip
        if helper.ALLOC_RE.search(tail):
            raise ModelLimitExceeded(f"{name}: {library} exceeded {limit_text} while {doing} ({signame})",
                                     hint=memory_hint)  # fmt: skip
        detail = f": {tail.strip().splitlines()[-1][:200]}" if tail.strip() else ""
        raise ModelCrashed(f"{name}: {library} crashed ({signame}) while {doing}; the model may be malformed{detail}")
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    raise ModelCrashed(f"{name}: {library} ended the process (exit status {code}) while {doing}, without a result")
