"""ONNX Runtime GPU targets: ``directml`` (Windows) and ``cuda`` (NVIDIA), on the same seams as ``cpu``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuxc.plugin import hookimpl
from gpuxc_ort_gpu.targets import CudaTarget, DirectMLTarget

__all__ = ["CudaTarget", "DirectMLTarget"]


@hookimpl
def gpuxc_register_targets(register: Callable[[type[Any]], None]) -> None:
    register(DirectMLTarget)
    register(CudaTarget)
