"""The ``coreml`` target: a CoreML ML Program (.mlpackage) translated op by op from ONNX."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuxc.plugin import hookimpl
from gpuxc_coreml.target import CoreMLTarget

__all__ = ["CoreMLTarget"]


@hookimpl
def gpuxc_register_targets(register: Callable[[type[Any]], None]) -> None:
    register(CoreMLTarget)
