"""Built-in graph passes, registered through the ``gpuxc`` entry point like any plugin.

- ``ort-optimize``: ONNX Runtime offline graph optimization at a level the target allows.
- ``fix-shapes``: symbolic input dims replaced by the values of ``build.shapes``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuxc.plugin import hookimpl
from gpuxc_passes.fix_shapes import FixShapes
from gpuxc_passes.ort_optimize import OrtOptimize

__all__ = ["FixShapes", "OrtOptimize"]


@hookimpl
def gpuxc_register_passes(register: Callable[[type[Any]], None]) -> None:
    register(OrtOptimize)
    register(FixShapes)
