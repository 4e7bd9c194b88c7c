"""The build host's CPU: its instruction-set extensions, OpenVINO's view of it, its physical cores.

A bundle chosen by timing on this host (a bf16 hint, an int8 variant, a thread count) is specialised
for it; the manifest records what this CPU had (``host.isa``, ``host.openvino_capabilities``) so a
deployment on another CPU can say why it is slower. The flags are read by the runner's own
``templates/runner/isa.py``, so the compiler and the bundle name them alike.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path


@functools.cache
def host_isa() -> list[str] | None:
    """This CPU's known extensions (avx2, avx512f, avx512_vnni, avx512_bf16, amx_bf16, amx_int8,
    asimddp, ...), None when the platform does not say."""
    from gpuxc.bundle.runner_source import runner_module

    isa: list[str] | None = runner_module("isa").host_isa()
    return isa


@functools.cache
def openvino_capabilities() -> list[str] | None:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (FP32, BF16, FP16, INT8, ...), None without OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        return None
    try:
        return sorted(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # no CPU plugin here: the target reports that itself
        return None


def physical_cores(cpuinfo: str = "/proc/cpuinfo") -> int:
    """Physical cores (what ONNX Runtime's default thread pool sizes itself to); logical CPUs when
    the platform does not say."""
    logical = os.cpu_count() or 1
    if not sys.platform.startswith("linux"):
        return logical
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return logical
    cores, package, core = set(), "", ""
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not key and core:  # end of one processor's block
            cores.add((package, core))
            package, core = "", ""
    return len(cores) or logical
