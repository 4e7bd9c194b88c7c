"""The ``openvino`` target: OpenVINO IR (model.xml + model.bin), verified on this host's CPU plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuxc.plugin import hookimpl
from gpuxc_openvino.target import OpenVinoTarget

__all__ = ["OpenVinoTarget"]


@hookimpl
def gpuxc_register_targets(register: Callable[[type[Any]], None]) -> None:
    register(OpenVinoTarget)
