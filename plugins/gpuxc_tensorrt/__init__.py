"""The ``tensorrt`` target: ONNX prepared for TensorRT, an engine ahead of time or a deferred build."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuxc.plugin import hookimpl
from gpuxc_tensorrt.target import TensorRTTarget

__all__ = ["TensorRTTarget"]


@hookimpl
def gpuxc_register_targets(register: Callable[[type[Any]], None]) -> None:
    register(TensorRTTarget)
