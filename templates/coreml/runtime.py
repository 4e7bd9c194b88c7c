"""CoreML adapter of this bundle: the .mlpackage through coremltools (macOS only).

The compute units come from --provider / $GPUXC_PROVIDER (ALL, CPU_ONLY, CPU_AND_GPU,
CPU_AND_NE), else the manifest. Build-time verification pins CPU_ONLY. CoreML has no
int64 tensors, so int64 feeds are narrowed to int32; ML Program inputs cannot be uint8 either, so
the inputs the manifest lists in ``input_dtypes`` (image preprocessing's pixels) are widened to
the package's type (int32: exact).
"""

from __future__ import annotations

import concurrent.futures
import sys
from pathlib import Path
from typing import Any

import numpy as np

if sys.platform != "darwin":
    raise ImportError("CoreML bundles run only on macOS (coremltools cannot predict on " + sys.platform + ")")

import coremltools as ct

UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
# GPUX backend names that mean "use the recorded compute units".
AUTO_NAMES = ("", "auto", "coreml")


class InferenceTimeout(TimeoutError):
    """A run took longer than runtime.timeout (CoreML cannot cancel it; its result is dropped)."""


class Adapter:
    def __init__(self, model_path: Path, settings: dict[str, Any], preferred: str, verified_providers: list[str],
                 strict: bool = True) -> None:
        self.settings = settings
        units = str(settings.get("compute_units") or "ALL")
        wanted = (preferred or "").strip()
        if wanted.lower() not in AUTO_NAMES:
            if wanted.upper() in UNITS:
                units = wanted.upper()
            elif strict:
                raise ValueError(f"compute units '{wanted}' are not CoreML's (one of: {', '.join(UNITS)})")
        self.units = units
        self.verified_providers = verified_providers
        self.model = ct.models.MLModel(str(model_path), compute_units=ct.ComputeUnit[units])
        # predict() blocks; a worker thread lets a run be abandoned at the timeout.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], timeout: float) -> dict[str, np.ndarray]:
        # The package may name tensors differently (coremltools makes them identifiers).
        names_in = self.settings.get("input_names", {})
        names_out = self.settings.get("output_names", {})
        casts = self.settings.get("input_dtypes", {})
        # An input mapped to None is one the package does not have (the program never read it).
        narrowed = {names_in.get(k, k): _as_package_dtype(v, casts.get(k)) for k, v in feeds.items()
                    if names_in.get(k, k) is not None}  # fmt: skip
        future = self.pool.submit(self.model.predict, narrowed)
        try:
            results = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise InferenceTimeout(f"inference exceeded the {timeout:g}s timeout") from None
        return {name: np.asarray(results[names_out.get(name, name)]) for name in output_names}

    def provider_info(self) -> dict[str, Any]:
        return {
            "name": "coreml",
            "available": True,
            "providers": [self.units],
            "verified_at_build": self.units in self.verified_providers or self.units == "CPU_ONLY",
            "runtime": "coremltools " + ct.__version__,
            "options": {"compute_units": self.units},
        }

    def available_providers(self) -> list[str]:
        return list(UNITS)

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.model = None


def _as_package_dtype(value: np.ndarray, dtype: str | None) -> np.ndarray:
    """``value`` in the dtype the package's input takes: the recorded one, else int64 as int32."""
    if dtype is not None:
        return value.astype(dtype, copy=False)
    return value.astype(np.int32) if value.dtype == np.int64 else value
