"""The ``cpu`` target: an ONNX model optimized for ONNX Runtime's CPU execution provider.

Registered through the ``gpuxc`` entry point, exactly as a third-party target is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuxc.plugin import hookimpl
from gpuxc_cpu.target import CpuTarget

__all__ = ["CpuTarget"]


@hookimpl
def gpuxc_register_targets(register: Callable[[type[Any]], None]) -> None:
    register(CpuTarget)
