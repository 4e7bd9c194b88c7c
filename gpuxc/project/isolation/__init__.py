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

This contains crashes and resource exhaustion. It is not a sandbox: the child runs with the
user's rights and can read what the user can (external data containment is enforced before,
by gpuxc/project/model.py). Linux only; elsewhere, or with ``GPUXC_ISOLATION=0``, the steps run in
process with no limits. ``GPUXC_ISOLATION_TEST_FAULT=abort|segv[:load|:run]`` makes the child
crash at the start of a step: a test hook, since no model is known to crash ONNX Runtime.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuxc import errors
from gpuxc.errors import ConfigError, GpuxcError, ModelCrashed, ModelLimitExceeded, first_line
from gpuxc.project import wire

if TYPE_CHECKING:
    import numpy as np

    from gpuxc.project.model import LoadedModel

MEMORY_ENV = "GPUXC_MODEL_MEMORY_LIMIT"
TIMEOUT_ENV = "GPUXC_MODEL_TIMEOUT"
ISOLATION_ENV = "GPUXC_ISOLATION"
FAULT_ENV = "GPUXC_ISOLATION_TEST_FAULT"
DEFAULT_TIMEOUT_S = 900.0
# A loaded model up to this size comes back from the child whole; a bigger one is loaded again
# in process (the same deterministic steps the child just finished).
SEND_BACK_BYTES = 256 << 20
PRELOAD = ("numpy", "onnx", "onnxruntime", "gpuxc.project.model", "gpuxc.ort_session")
_START_TIMEOUT_S = 120.0
_ALLOC_RE = re.compile(r"bad_alloc|Failed to allocate|[Cc]annot allocate memory|MemoryError|[Oo]ut of memory")
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?)B?\s*", re.IGNORECASE)


# -- settings ---------------------------------------------------------------------------------------


def enabled() -> bool:
    """Whether steps run in a child: Linux, a Python to start, and not ``GPUXC_ISOLATION=0``."""
    if os.environ.get(ISOLATION_ENV, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    return sys.platform.startswith("linux") and bool(sys.executable)


def parse_size(text: str) -> int | None:
    """``"8GiB"``, ``"512M"``, ``"1.5GB"``, ``"8000000000"`` → bytes; ``"0"``/``"none"`` → None (no limit)."""
    if text.strip().lower() in ("0", "none", "off", "unlimited"):
        return None
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise ConfigError(f"{MEMORY_ENV} must be a size like 8GiB, 512MiB or a number of bytes, got '{text}'")
    number, unit, binary = match.groups()
    base = 1024 if binary or unit == "" else 1000
    return int(float(number) * base ** "_KMGT".index(unit.upper() or "_"))


def physical_memory() -> int | None:
    """This machine's RAM, or the cgroup (container) memory limit when lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(cgroup).read_text().strip()))
    return total


def memory_limit() -> int | None:
    """The child's address-space limit: ``$GPUXC_MODEL_MEMORY_LIMIT``, else physical memory."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    return parse_size(text) if text else physical_memory()


def timeout_s() -> float | None:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds (0: none), got '{text}'") from None
    return value if value > 0 else None


def size_text(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


# -- the two steps of a compile --------------------------------------------------------------------


def load_model(path: Path) -> LoadedModel:
    """:func:`gpuxc.project.model.load_model` (parse, checks, shape inference) in a child process."""
    from gpuxc.project import model

    loaded = run_isolated("load", Path(path), model_path=Path(path), first_stage=("onnx", "loading the model"))
    return loaded if loaded is not None else model.load_model(path)


def run_onnxruntime(path: Path, inputs: dict[str, np.ndarray], providers: list[str] | None = None,
                    level: str = "all") -> dict[str, np.ndarray]:  # fmt: skip
    """:func:`gpuxc.ort_session.run_onnxruntime` on a model file (session and first run) in a child process."""
    return run_isolated("run", Path(path), inputs, providers, level, model_path=Path(path),
                        first_stage=("ONNX Runtime", "creating a session"))  # fmt: skip


def _load_step(path: Path) -> LoadedModel | None:
    from gpuxc.project import model

    _test_fault("load")
    loaded = model.load_model(path)
    return loaded if loaded.proto.ByteSize() <= SEND_BACK_BYTES else None


def _run_step(path: Path, inputs: dict[str, Any], providers: list[str] | None, level: str) -> dict[str, Any]:
    from gpuxc import ort_session

    def on_stage(doing: str) -> None:
        stage("ONNX Runtime", doing)
        if doing == "creating a session":
            _test_fault("run")

    return ort_session.run_onnxruntime(path, inputs, providers, level, on_stage=on_stage)


# What a child may be asked to run, by name: a message names a step, it never carries code.
STEPS = {"load": _load_step, "run": _run_step, "pid": os.getpid}


# -- running a step in a child ---------------------------------------------------------------------

_lock = threading.Lock()
_server: _Server | None = None
_stage_fd: int | None = None  # set in a child: where stage() writes


def stage(library: str, doing: str) -> None:
    """Record, from inside a step, what it is doing now (named if the child dies); a no-op in process."""
    if _stage_fd is not None:
        _write_frame(_stage_fd, wire.encode(("stage", library, doing)))


def run_isolated(step: str, *args: Any, model_path: Path, first_stage: tuple[str, str]) -> Any:
    """``STEPS[step](*args)`` in a child process (in process when :func:`enabled` is false).

    Arguments and results travel as plain data (gpuxc/project/wire.py, never as code); a
    :class:`GpuxcError` the step raises comes back as its class name and message; a child that
    dies, goes over the memory limit or the clock becomes a one-line ModelError.
    """
    if step not in STEPS:
        raise ValueError(f"unknown isolated step {step!r}")
    if not enabled():
        return STEPS[step](*args)
    limit, clock = memory_limit(), timeout_s()
    fault = os.environ.get(FAULT_ENV) or None
    global _server
    with _lock:
        server = _get_server()
        try:
            status, data, tail, timed_out = server.call((step, list(args), limit, fault), clock)
        except wire.WireError as exc:
            raise errors.ModelError(f"{model_path.name}: cannot hand the model's data to the isolated "
                                    f"process ({exc})") from None  # fmt: skip
        except _ServerGone:
            server.close()
            _server = None  # the next call starts a new helper
            raise ModelCrashed(f"{model_path.name}: gpuxc's isolation helper died while {first_stage[1]}; "
                               "the model may be malformed") from None  # fmt: skip
        except BaseException:  # Ctrl-C: closing the helper ends the child too
            server.close()
            _server = None
            raise
    return _outcome(model_path.name, first_stage, status, data, tail, timed_out, limit, clock)


def _outcome(name: str, stage: tuple[str, str], status: int, data: bytes, tail: str, timed_out: bool,
             limit: int | None, clock: float | None) -> Any:  # fmt: skip
    final = None
    for frame in _frames(data):
        if frame[0] == "stage":
            stage = (frame[1], frame[2])
        else:
            final = frame
    library, doing = stage
    # A child that finished just as the clock ran out was not killed: its result stands.
    timed_out = timed_out and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    memory_hint = f"raise {MEMORY_ENV} (bytes or e.g. 32GiB; 0: no limit) if the model really needs more"
    limit_text = f"the memory limit of {size_text(limit)} ({MEMORY_ENV})" if limit else "the available memory"
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
        if _ALLOC_RE.search(tail):
            raise ModelLimitExceeded(f"{name}: {library} exceeded {limit_text} while {doing} ({signame})",
                                     hint=memory_hint)  # fmt: skip
        detail = f": {tail.strip().splitlines()[-1][:200]}" if tail.strip() else ""
        raise ModelCrashed(f"{name}: {library} crashed ({signame}) while {doing}; the model may be malformed{detail}")
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    raise ModelCrashed(f"{name}: {library} ended the process (exit status {code}) while {doing}, without a result")


def _test_fault(step: str) -> None:
    """GPUXC_ISOLATION_TEST_FAULT=abort|segv[:load|:run], read in the parent: crash like a native bug."""
    fault = _child_fault
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


_child_fault: str | None = None


# -- framing ----------------------------------------------------------------------------------------


def _write_frame(fd: int, payload: bytes) -> None:
    view = memoryview(struct.pack(">Q", len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> bytes | None:
    head = _read_exact(fd, 8)
    return None if head is None else _read_exact(fd, struct.unpack(">Q", head)[0])


def _frames(data: bytes) -> list[tuple[Any, ...]]:
    """Complete frames of a child's output; a frame cut short by its death is dropped."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">Q", data[pos : pos + 8])
        if pos + 8 + n > len(data):
            break
        out.append(wire.decode(data[pos + 8 : pos + 8 + n]))
        pos += 8 + n
    return out


# -- parent side of the fork server -----------------------------------------------------------------


class _ServerGone(RuntimeError):
    pass


class _Server:
    """The helper process; requests on its stdin, replies on its stdout, one job at a time."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["GPUXC_ISOLATION_SYSPATH"] = json.dumps(sys.path)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")  # fewer threads in a process that forks
        code = ("import json, os, sys; sys.path[:] = json.loads(os.environ['GPUXC_ISOLATION_SYSPATH']); "
                "from gpuxc.project.isolation import _serve; _serve()")  # fmt: skip
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, close_fds=True)  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.req, self.resp = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.owner = os.getpid()  # a forked copy of the caller must not talk on these pipes
        try:
            ready = self._recv(_START_TIMEOUT_S)
        except _ServerGone:
            ready = None
        if ready is None or ready[0] != "ready" or ready[2]:
            self.close()
            why = ready[2] if ready else "no answer"
            raise RuntimeError(
                f"cannot start gpuxc's model isolation helper ({why}); {ISOLATION_ENV}=0 loads in process"
            )

    def _recv(self, timeout: float | None) -> tuple[Any, ...] | None:
        if timeout is not None:
            poller = select.poll()  # not select.select: the caller may hold more than 1024 fds
            poller.register(self.resp, select.POLLIN)
            if not poller.poll(max(timeout, 0) * 1000):
                return None
        data = _read_frame(self.resp)
        if data is None:
            raise _ServerGone("gpuxc's model isolation helper process died")
        return wire.decode(data)

    def call(self, job: tuple[Any, ...], clock: float | None) -> tuple[int, bytes, str, bool]:
        _write_frame(self.req, wire.encode(("job", *job)))
        started = self._recv(_START_TIMEOUT_S)
        if started is None or started[0] != "started":
            raise _ServerGone("gpuxc's model isolation helper did not start a child")
        deadline = None if clock is None else time.monotonic() + clock
        timed_out = False
        done = self._recv(None if deadline is None else deadline - time.monotonic())
        if done is None:
            timed_out = True
            _write_frame(self.req, wire.encode(("kill",)))  # the helper kills its own (unreaped) child
            done = self._recv(None)
        assert done is not None and done[0] == "done"
        return done[1], done[2], done[3], timed_out

    def close(self) -> None:
        if self.owner != os.getpid():
            return
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]


def _get_server() -> _Server:
    global _server
    if _server is None or _server.owner != os.getpid() or _server.proc.poll() is not None:
        if _server is not None:
            _server.close()
        _server = _Server()
    return _server


@atexit.register
def _close_server() -> None:
    global _server
    if _server is not None:
        _server.close()
        _server = None


# -- the fork server and its children --------------------------------------------------------------


def _serve() -> None:
    """Helper process: preload, then fork one child per job and relay its output and exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; it kills the child
    req, resp = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # a library's print must not corrupt the replies
    error = None
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception as exc:
            error = f"importing {name}: {type(exc).__name__}: {first_line(exc)}"
    if error is None:
        with contextlib.suppress(Exception):
            _warm_up()
    _write_frame(resp, wire.encode(("ready", os.getpid(), error)))
    while (data := _read_frame(req)) is not None:
        try:
            job = wire.decode(data)
        except wire.WireError as exc:  # answer like a child that failed, and stay up
            _write_frame(resp, wire.encode(("started", 0)))
            failed = _frame(("exception", f"the job could not be read: {exc}"))
            _write_frame(resp, wire.encode(("done", 0, failed, "")))
            continue
        if job[0] == "job":
            _serve_one(job[1:], req, resp)


def _frame(message: tuple[Any, ...]) -> bytes:
    payload = wire.encode(message)
    return struct.pack(">Q", len(payload)) + payload


def _warm_up() -> None:
    """Load and run a tiny model once, so each child skips the libraries' first-use setup (~20 ms).
    The session and its threads are gone before the first fork."""
    import gc

    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from gpuxc import ort_session
    from gpuxc.project import model

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "warm_up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with tempfile.TemporaryDirectory(prefix="gpuxc-warm-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(proto, path)
        wire.encode(model.load_model(path))
        ort_session.run_onnxruntime(path, {"x": np.ones((1, 2), np.float32)})
    gc.collect()


def _serve_one(job: tuple[Any, ...], req: int, resp: int) -> None:
    log = tempfile.TemporaryFile()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(r)
            os.close(req)
            os.close(resp)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            _child(job, w)
        finally:
            os._exit(70)
    os.close(w)
    _write_frame(resp, wire.encode(("started", pid)))
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([r, req], [], [])
        if req in ready:
            message = _read_frame(req)
            if message is None:  # the caller is gone: so is its child
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                sys.exit(0)
            if wire.decode(message)[0] == "kill":
                os.kill(pid, signal.SIGKILL)
        if r in ready:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
    tail = log.read().decode("utf-8", "replace")
    log.close()
    _write_frame(resp, wire.encode(("done", status, b"".join(chunks), tail)))


def _child(job: tuple[Any, ...], out: int) -> None:
    global _stage_fd, _child_fault
    step, args, limit, fault = job
    _stage_fd, _child_fault = out, fault
    _die_with_parent()
    if limit:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        result: tuple[Any, ...] = ("ok", STEPS[step](*args))
    except GpuxcError as exc:
        is_memory = _ALLOC_RE.search(exc.message)
        result = ("memory", exc.message) if is_memory else ("error", type(exc).__name__, exc.message, exc.hint)
    except MemoryError:
        result = ("memory", "MemoryError")
    except BaseException as exc:
        result = ("exception", f"{type(exc).__name__}: {first_line(exc)}")
    try:
        payload = wire.encode(result)
    except MemoryError:
        payload = wire.encode(("memory", "MemoryError"))
    except Exception as exc:
        payload = wire.encode(("exception", f"cannot send the result: {type(exc).__name__}: {first_line(exc)}"))
    _write_frame(out, payload)
    os._exit(0)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the child goes when the helper goes (best effort)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
