"""OpenVINO adapter of this bundle: device choice, the recorded inference precision, timed runs.

The device comes from --provider / $GPUXC_PROVIDER (CPU, GPU, NPU, AUTO), else the
manifest. The inference precision hint recorded at build time (and verified there)
is applied on every device that honours it.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
# GPUX backend names that mean "let OpenVINO choose" for this bundle.
AUTO_NAMES = ("", "auto", "openvino")
# Ops whose run length depends on input values (a trip count): runs that may need the timeout.
UNBOUNDED_OPS = ("Loop", "TensorIterator")


class InferenceTimeout(TimeoutError):
    """A run took longer than runtime.timeout and was cancelled."""


class Adapter:
    def __init__(self, model_path: Path, settings: dict[str, Any], preferred: str, verified_providers: list[str],
                 strict: bool = True) -> None:
        self.settings = settings
        self.core = ov.Core()
        self.available = list(self.core.available_devices)
        device = str(settings.get("device") or "CPU")
        wanted = (preferred or "").strip()
        if wanted.lower() not in AUTO_NAMES:
            if wanted.upper() in DEVICES and (wanted.upper() == "AUTO" or wanted.upper() in self.available):
                device = wanted.upper()
            elif strict:
                raise ValueError(f"device '{wanted}' is not available to OpenVINO here "
                                 f"(available: {', '.join(self.available)}, or AUTO)")
        self.device = device
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "THROUGHPUT" if settings.get("performance_hint") == "throughput" else "LATENCY",
        }
        hint = settings.get("inference_precision")
        if hint and device in ("CPU", "GPU"):
            config["INFERENCE_PRECISION_HINT"] = hint
        if settings.get("enable_profiling"):
            config["PERF_COUNT"] = True
        self.timings: list[tuple[str, str, float]] = []
        if settings.get("intra_op_threads"):
            config["INFERENCE_NUM_THREADS"] = int(settings["intra_op_threads"])
        if settings.get("num_streams"):
            config["NUM_STREAMS"] = int(settings["num_streams"])
        if settings.get("cache_dir"):
            cache = Path(settings["cache_dir"])
            cache = cache if cache.is_absolute() else model_path.parent.parent / cache
            self.core.set_property({"CACHE_DIR": str(cache)})
        self.config = config
        self.verified_providers = verified_providers
        model = self.core.read_model(str(model_path))
        # Loop and TensorIterator run as long as their input values say, and dynamic shapes as large as
        # the input is: only such a run can outlast runtime.timeout. Others run inline (request.infer);
        # the async hand-off that lets a run be abandoned costs ~20 µs a call (docs/benchmarks.md).
        self.bounded = not model.is_dynamic() and not any(
            op.get_type_name() in UNBOUNDED_OPS for op in model.get_ordered_ops())
        self.compiled = self.core.compile_model(model, device, config)
        # A request runs one inference at a time ("Infer Request is busy") and the server calls infer
        # from a thread pool, so a bounded graph's calls take requests from a pool made here, as many as
        # OpenVINO finds optimal (one per stream): creating one while another runs blocks until that run
        # ends. An unbounded graph uses `request` alone, one call at a time (`_abandonable`).
        self.request = self.compiled.create_infer_request()
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pool.put(self.request)
        for _ in range(self._pool_size() - 1 if self.bounded else 0):
            self._pool.put(self.compiled.create_infer_request())
        self._serial = threading.Lock()
        self._abandoned = False
        self.ports = {name: port for port in self.compiled.outputs for name in port.get_names()}
        # OpenVINO drops inputs whose values the graph never reads (CastLike's `like`, an input
        # used only for its shape once shapes are fixed): the bundle still takes them, and ignores them.
        self.inputs = {name for port in self.compiled.inputs for name in port.get_names()}

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], timeout: float) -> dict[str, np.ndarray]:
        if not self.inputs.issuperset(feeds):  # rare (CastLike's like): leave the usual call copy-free
            feeds = {name: value for name, value in feeds.items() if name in self.inputs}
        if not self.bounded:
            return self._abandonable(self.request, feeds, output_names, timeout)
        request = self._pool.get()  # waits while every request is running
        try:
            # Inline: inputs are read in place (the run ends before this returns), outputs are copies.
            results = request.infer(feeds, share_inputs=True)
            self._count(request)
            return {name: results[self.ports[name]] for name in output_names}
        finally:
            self._pool.put(request)

    def _pool_size(self) -> int:
        try:
            return max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:  # a device that does not say: one request
            return 1

    def _count(self, request: Any) -> None:
        if "PERF_COUNT" in self.config:  # the counters describe the last inference only: collect each
            self.timings += [(p.node_name, p.node_type, p.real_time.total_seconds() * 1000.0)
                             for p in request.get_profiling_info()]  # fmt: skip

    def _abandonable(self, request: Any, feeds: dict[str, np.ndarray], output_names: list[str],
                     timeout: float) -> dict[str, np.ndarray]:  # fmt: skip
        """An async run abandoned after ``timeout``; a call waits its own timeout for the request,
        and for an earlier abandoned run to end (OpenVINO cannot stop it)."""
        ms = max(1, int(timeout * 1000))
        if not self._serial.acquire(timeout=timeout):
            raise InferenceTimeout(f"inference exceeded the {timeout:g}s timeout (waiting for another run)")
        try:
            if self._abandoned:
                try:
                    if not request.wait_for(ms):
                        raise InferenceTimeout(f"inference exceeded the {timeout:g}s timeout "
                                               "(an earlier run that did is still going)")  # fmt: skip
                except InferenceTimeout:
                    raise
                except Exception:
                    pass  # the abandoned run ended: OpenVINO reports its cancellation here
                self._abandoned = False
            request.start_async(feeds)
            if not request.wait_for(ms):
                request.cancel()
                self._abandoned = True
                raise InferenceTimeout(f"inference exceeded the {timeout:g}s timeout")
            self._count(request)
            return {name: np.array(request.get_tensor(self.ports[name]).data) for name in output_names}
        finally:
            self._serial.release()

    def profile(self) -> list[tuple[str, str, float]] | None:
        """Per-node times of every run so far, from OpenVINO's performance counters."""
        return list(self.timings) if "PERF_COUNT" in self.config else None

    def provider_info(self) -> dict[str, Any]:
        return {
            "name": self.device,
            "available": self.device == "AUTO" or self.device in self.available,
            "providers": [self.device],
            "verified_at_build": self.device in self.verified_providers or self.device == "CPU",
            "runtime": "openvino " + ov.get_version(),
            "options": {k: str(v) for k, v in self.config.items()},
        }

    def available_providers(self) -> list[str]:
        return self.available

    def close(self) -> None:
        self.request = None
        self.compiled = None
