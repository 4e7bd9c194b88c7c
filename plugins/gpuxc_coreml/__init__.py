"""The ``coreml`` target: a CoreML ML Program (.mlpackage) translated op by op from ONNX."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

# Off macOS, importing coremltools logs a WARNING per missing native proxy ("Failed to load
# _MLModelProxy ..."): noise on every compile. That it cannot predict here is recorded in each
# manifest instead (verification: unverified); its errors still arrive as exceptions.
logging.getLogger("coremltools").setLevel(logging.ERROR)

from gpuxc.plugin import hookimpl  # noqa: E402
from gpuxc_coreml.target import CoreMLTarget  # noqa: E402

__all__ = ["CoreMLTarget"]


@hookimpl
def gpuxc_register_targets(register: Callable[[type[Any]], None]) -> None:
    register(CoreMLTarget)
