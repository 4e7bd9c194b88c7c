"""ONNX Runtime adapter of this bundle: provider selection, session settings, timed runs.

Providers are chosen in GPUX's priority order (TensorRT > CUDA > ROCm > CoreML >
DirectML > OpenVINO > CPU) among those this onnxruntime build offers, with the
preference from --provider, $GPUXC_PROVIDER or gpux.yml runtime.gpu.backend
first; CPU is always the last fallback.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

PRIORITY = [
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
]
BACKENDS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class InferenceTimeout(TimeoutError):
    """A run took longer than runtime.timeout and was stopped."""


class _Watchdog:
    """One daemon thread that sets ``RunOptions.terminate`` on runs past their deadline.

    Starting a ``threading.Timer`` per inference costs a thread start on every call
    (measured: ~0.2 ms, more than a small model's whole run), and waking a thread on every
    call competes with ONNX Runtime's own threads (measured: 5-10% on a 2 ms CNN). Arming
    costs a lock; the thread is woken only when a new deadline is earlier than the one it
    sleeps towards, which with one fixed timeout happens only when it was idle.
    """

    IDLE_S = 3600.0

    def __init__(self) -> None:
        # Arming takes the plain lock (a C-level context manager); only the thread waits on the condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._deadlines: dict[int, tuple[float, Any]] = {}
        self._next = 0
        self._wake_at = float("inf")
        self._thread: threading.Thread | None = None

    def arm(self, run_options: Any, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="gpuxc-watchdog", daemon=True)
                self._thread.start()
            self._next += 1
            self._deadlines[self._next] = (deadline, run_options)
            if deadline < self._wake_at:
                self._cond.notify()
            return self._next

    def disarm(self, token: int) -> None:
        with self._lock:
            self._deadlines.pop(token, None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, run_options) in list(self._deadlines.items()):
                    if deadline <= now:
                        run_options.terminate = True
                        del self._deadlines[token]
                self._wake_at = min((d for d, _ in self._deadlines.values()), default=now + self.IDLE_S)
                self._cond.wait(timeout=max(self._wake_at - now, 0.001))


_WATCHDOG = _Watchdog()


def memory_bytes(text: Any) -> int | None:
    if text in (None, ""):
        return None
    match = _MEMORY.match(str(text))
    if match is None:
        raise ValueError(f"not a memory size: {text!r}")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])


def select_providers(preferred: str, available: list[str], strict: bool = True) -> list[str]:
    """Providers to create the session with, best first; CPU always last.

    An explicit request (--provider, $GPUXC_PROVIDER) that this build cannot honour is an
    error; gpux.yml's runtime.gpu.backend is a preference that falls back to the auto order.
    """
    order = [p for p in PRIORITY if p in available]
    preferred = (preferred or "auto").lower()
    if preferred not in ("auto", ""):
        wanted = BACKENDS.get(preferred, preferred)
        if wanted in available:
            order = [wanted] + [p for p in order if p != wanted and p == "CPUExecutionProvider"]
        elif strict:
            raise ValueError(
                f"provider '{preferred}' is not available in this onnxruntime build "
                f"(available: {', '.join(available)})"
            )
    if "CPUExecutionProvider" not in order:
        order.append("CPUExecutionProvider")
    return order


class Adapter:
    def __init__(self, model_path: Path, settings: dict[str, Any], preferred: str, verified_providers: list[str],
                 strict: bool = True) -> None:
        self.settings = settings
        self.verified_providers = verified_providers
        self.available = ort.get_available_providers()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # The bundle's model was optimized offline at a portable level; the host-specific
        # layout optimizations happen here, on the machine that runs it.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(settings.get("intra_op_threads", 0))
        options.inter_op_num_threads = int(settings.get("inter_op_threads", 0))
        parallel = settings.get("execution_mode") == "parallel"
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        if settings.get("allow_spinning") is False:
            # Idle pool threads stop spinning at once: on a small model the caller's own work between
            # runs no longer competes with them for the cores (a setting --optimize auto may choose).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if settings.get("disable_memory_pattern"):
            options.enable_mem_pattern = False
        if settings.get("enable_profiling"):
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "gpuxc-profile")
        self.requested = select_providers(preferred, self.available, strict)
        provider_options = [self._provider_options(p) for p in self.requested]
        self.session = ort.InferenceSession(str(model_path), options, providers=self.requested,
                                            provider_options=provider_options)
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self._local = threading.local()

    def _provider_options(self, provider: str) -> dict[str, Any]:
        limit = memory_bytes(self.settings.get("gpu_memory"))
        device = self.settings.get("device_id")
        out: dict[str, Any] = {}
        if provider in ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider",
                        "TensorrtExecutionProvider") and device is not None:
            out["device_id"] = str(device)
        if provider in ("CUDAExecutionProvider", "ROCMExecutionProvider") and limit:
            out["gpu_mem_limit"] = str(limit)
        if provider == "CUDAExecutionProvider":
            if self.settings.get("cudnn_conv_algo_search"):
                out["cudnn_conv_algo_search"] = str(self.settings["cudnn_conv_algo_search"])
            if self.settings.get("enable_cuda_graph"):
                out["enable_cuda_graph"] = "1"
        if provider == "TensorrtExecutionProvider" and limit:
            out["trt_max_workspace_size"] = str(limit)
        return out

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], timeout: float) -> dict[str, np.ndarray]:
        # One RunOptions per thread, reused until a watchdog terminates a run with it (~1 µs a call saved).
        run_options = getattr(self._local, "run_options", None)
        if run_options is None:
            run_options = self._local.run_options = ort.RunOptions()
            run_options.log_severity_level = 4  # a terminated run is reported as InferenceTimeout, not an ORT log line
        # ONNX Runtime checks this flag between kernels: a hung or slow run stops cleanly.
        token = _WATCHDOG.arm(run_options, timeout)
        try:
            values = self.session.run(output_names, feeds, run_options)
        except Exception:
            if run_options.terminate:
                raise InferenceTimeout(f"inference exceeded the {timeout:g}s timeout") from None
            raise
        finally:
            _WATCHDOG.disarm(token)
            if run_options.terminate:  # terminated (or set just as the run ended): never reuse it
                self._local.run_options = None
        return dict(zip(output_names, values, strict=False))

    def provider_info(self) -> dict[str, Any]:
        active = self.session.get_providers()
        name = active[0] if active else None
        return {
            "name": name,
            "available": name in self.available,
            "priority": PRIORITY.index(name) if name in PRIORITY else None,
            "providers": active,
            "verified_at_build": name in self.verified_providers,
            "runtime": "onnxruntime " + ort.__version__,
            "options": self.session.get_provider_options().get(name, {}) if name else {},
        }

    def available_providers(self) -> list[str]:
        return [p for p in PRIORITY if p in self.available] + [p for p in self.available if p not in PRIORITY]

    def profile(self) -> list[tuple[str, str, float]] | None:
        """Node timings of every run so far from ONNX Runtime's trace (this ends the profiling)."""
        if not self.settings.get("enable_profiling") or self.session is None:
            return None
        import json

        path = Path(self.session.end_profiling())
        self.settings = {**self.settings, "enable_profiling": False}  # ended: close() must not end it again
        try:
            events = json.loads(path.read_text(encoding="utf-8"))
        finally:
            path.unlink(missing_ok=True)
        suffix = "_kernel_time"
        return [(e["name"][: -len(suffix)], str(e.get("args", {}).get("op_name", "?")), e.get("dur", 0) / 1000.0)
                for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith(suffix)]  # fmt: skip

    def close(self) -> None:
        if self.settings.get("enable_profiling"):
            try:
                self.session.end_profiling()
            except Exception:
                pass
        self.session = None
