"""OpenVINO adapter of this bundle: device choice, the recorded inference precision, timed runs.

The device comes from --provider / $GPUXC_PROVIDER (CPU, GPU, NPU, AUTO), else the
manifest. The inference precision hint recorded at build time (and verified there)
is applied on every device that honours it.
"""

from __future__ import annotations

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
        self.request = self.compiled.create_infer_request()
        self.ports = {name: port for port in self.compiled.outputs for name in port.get_names()}
        # OpenVINO drops inputs whose values the graph never reads (CastLike's `like`, an input
        # used only for its shape once shapes are fixed): the bundle still takes them, and ignores them.
        self.inputs = {name for port in self.compiled.inputs for name in port.get_names()}

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], timeout: float) -> dict[str, np.ndarray]:
        if not self.inputs.issuperset(feeds):  # rare (CastLike's like): leave the usual call copy-free
            feeds = {name: value for name, value in feeds.items() if name in self.inputs}
        if self.bounded:
            # Inline: inputs are read in place (the run ends before this returns), outputs are copies.
            results = self.request.infer(feeds, share_inputs=True)
            outputs = {name: results[self.ports[name]] for name in output_names}
        else:
            self.request.start_async(feeds)
            if not self.request.wait_for(max(1, int(timeout * 1000))):
                self.request.cancel()
                raise InferenceTimeout(f"inference exceeded the {timeout:g}s timeout")
            outputs = {name: np.array(self.request.get_tensor(self.ports[name]).data) for name in output_names}
        if "PERF_COUNT" in self.config:  # the counters describe the last inference only: collect each
            self.timings += [(p.node_name, p.node_type, p.real_time.total_seconds() * 1000.0)
                             for p in self.request.get_profiling_info()]  # fmt: skip
        return outputs

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
