"""The isolation helper: a small fork server, and the children it forks to run one step each.

The caller's side is :class:`Server` (started on first use, kept for the life of the caller);
the helper's side is :func:`serve`, which preloads and warms up the libraries once and then
forks one child per job (:func:`_child`: memory limit, death with the helper, the step, its
result as one message). gpuxc/project/isolation/__init__.py says why it is built this way.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpuxc.errors import GpuxcError, first_line
from gpuxc.project.isolation import protocol, steps
from gpuxc.project.isolation.settings import ISOLATION_ENV

PRELOAD = ("numpy", "onnx", "onnxruntime", "gpuxc.project.model", "gpuxc.ort_session")
# How a failed allocation reads in native libraries' messages and exceptions.
ALLOC_RE = re.compile(r"bad_alloc|Failed to allocate|[Cc]annot allocate memory|MemoryError|[Oo]ut of memory")
_START_TIMEOUT_S = 120.0

_server: Server | None = None


class ServerGone(RuntimeError):
    """The helper process died or stopped answering."""


class Server:
    """The helper process; requests on its stdin, replies on its stdout, one job at a time."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["GPUXC_ISOLATION_SYSPATH"] = json.dumps(sys.path)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")  # fewer threads in a process that forks
        code = ("import json, os, sys; sys.path[:] = json.loads(os.environ['GPUXC_ISOLATION_SYSPATH']); "
                "from gpuxc.project.isolation.helper import serve; serve()")  # fmt: skip
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, close_fds=True)  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.req, self.resp = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.owner = os.getpid()  # a forked copy of the caller must not talk on these pipes
        try:
            ready = self._recv(_START_TIMEOUT_S)
        except ServerGone:
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
        data = protocol.read_frame(self.resp)
        if data is None:
            raise ServerGone("gpuxc's model isolation helper process died")
        return protocol.decode(data)

    def call(self, job: tuple[Any, ...], clock: float | None) -> tuple[int, bytes, str, bool]:
        protocol.write_frame(self.req, protocol.encode(("job", *job)))
        started = self._recv(_START_TIMEOUT_S)
        if started is None or started[0] != "started":
            raise ServerGone("gpuxc's model isolation helper did not start a child")
        deadline = None if clock is None else time.monotonic() + clock
        timed_out = False
        done = self._recv(None if deadline is None else deadline - time.monotonic())
        if done is None:
            timed_out = True
            protocol.write_frame(self.req, protocol.encode(("kill",)))  # the helper kills its own (unreaped) child
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


def get_server() -> Server:
    global _server
    if _server is None or _server.owner != os.getpid() or _server.proc.poll() is not None:
        if _server is not None:
            _server.close()
        _server = Server()
    return _server


def drop_server(server: Server) -> None:
    """Close ``server`` after a failed call: the next call starts a new helper."""
    global _server
    server.close()
    if _server is server:
        _server = None


@atexit.register
def close_server() -> None:
    global _server
    if _server is not None:
        _server.close()
        _server = None


# -- the helper process and its children ----------------------------------------------------------


def serve() -> None:
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
    protocol.write_frame(resp, protocol.encode(("ready", os.getpid(), error)))
    while (data := protocol.read_frame(req)) is not None:
        try:
            job = protocol.decode(data)
        except protocol.ProtocolError as exc:  # answer like a child that failed, and stay up
            protocol.write_frame(resp, protocol.encode(("started", 0)))
            failed = protocol.frame(protocol.encode(("exception", f"the job could not be read: {exc}")))
            protocol.write_frame(resp, protocol.encode(("done", 0, failed, "")))
            continue
        if job[0] == "job":
            _serve_one(job[1:], req, resp)


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
        protocol.encode(model.load_model(path))
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
    protocol.write_frame(resp, protocol.encode(("started", pid)))
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([r, req], [], [])
        if req in ready:
            message = protocol.read_frame(req)
            if message is None:  # the caller is gone: so is its child
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                sys.exit(0)
            if protocol.decode(message)[0] == "kill":
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
    protocol.write_frame(resp, protocol.encode(("done", status, b"".join(chunks), tail)))


def _child(job: tuple[Any, ...], out: int) -> None:
    step, args, limit, fault = job
    steps.stage_fd, steps.child_fault = out, fault
    _die_with_parent()
    if limit:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        result: tuple[Any, ...] = ("ok", steps.STEPS[step](*args))
    except GpuxcError as exc:
        is_memory = ALLOC_RE.search(exc.message)
        result = ("memory", exc.message) if is_memory else ("error", type(exc).__name__, exc.message, exc.hint)
    except MemoryError:
        result = ("memory", "MemoryError")
    except BaseException as exc:
        result = ("exception", f"{type(exc).__name__}: {first_line(exc)}")
    try:
        payload = protocol.encode(result)
    except MemoryError:
        payload = protocol.encode(("memory", "MemoryError"))
    except Exception as exc:
        payload = protocol.encode(("exception", f"cannot send the result: {type(exc).__name__}: {first_line(exc)}"))
    protocol.write_frame(out, payload)
    os._exit(0)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the child goes when the helper goes (best effort)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
