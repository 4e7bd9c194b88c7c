"""The ``web`` target: ONNX Runtime Web bundles (WASM, WebGPU) verified in headless Chromium.

Registered through the ``gpuxc`` entry point, exactly as a third-party target is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuxc.plugin import hookimpl
from gpuxc_web.target import WebTarget

__all__ = ["WebTarget"]


@hookimpl
def gpuxc_register_targets(register: Callable[[type[Any]], None]) -> None:
    register(WebTarget)
