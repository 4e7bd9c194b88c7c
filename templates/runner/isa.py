"""The CPU's instruction-set extensions, and what a bundle specialised on its build host needs of them.

Standard library only: gpuxc loads this file too (``gpuxc/host.py`` records the build host's ISA
with it), so the compiler and every bundle read CPU flags the same way. Linux: ``/proc/cpuinfo``
(``$GPUXC_CPUINFO`` points elsewhere, for tests); macOS: ``sysctl``; elsewhere nothing is known,
and nothing is warned about.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

CPUINFO = "/proc/cpuinfo"
CPUINFO_ENV = "GPUXC_CPUINFO"
# The extensions recorded in a manifest (x86 cpuinfo flag names; ARM's as Linux spells them).
KNOWN = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
         "amx_fp16", "asimddp", "bf16", "fphp", "i8mm")  # fmt: skip
# What a specialised artifact needs (``artifact.settings["requires_isa"]``, OpenVINO's capability names),
# met by any one of these extensions, x86 first, then ARM.
REQUIREMENTS = {
    "BF16": (("avx512_bf16", "amx_bf16"), ("bf16",)),
    "FP16": (("avx512_fp16", "amx_fp16"), ("fphp",)),
    "INT8": (("avx512_vnni", "avx_vnni", "amx_int8"), ("asimddp", "i8mm")),
}
# macOS sysctl keys (Apple silicon) by the Linux name of the same extension.
_MAC_ARM = {"hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_FP16": "fphp",
            "hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm"}  # fmt: skip


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """Every flag the CPU reports, lower case; None when this host cannot tell."""
    path = cpuinfo or os.environ.get(CPUINFO_ENV) or (CPUINFO if sys.platform.startswith("linux") else None)
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        flags: set[str] = set()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):  # x86, ARM
                flags.update(value.lower().split())
        return flags
    if sys.platform == "darwin":
        return _mac_flags()
    return None


def host_isa(cpuinfo: str | None = None) -> list[str] | None:
    """The known extensions this CPU has (see ``KNOWN``), or None when unknown."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else [name for name in KNOWN if name in flags]


def isa_warnings(required: list[str], runtime: str, cpuinfo: str | None = None) -> list[str]:
    """One line per requirement of the artifact this CPU does not meet (empty when met or unknown)."""
    flags = cpu_flags(cpuinfo) if required else None
    if flags is None:
        return []
    arm = platform.machine().lower() in ("aarch64", "arm64") or "asimd" in flags
    out = []
    for need in required:
        x86, arm_flags = REQUIREMENTS.get(need, ((need.lower(),), (need.lower(),)))
        wanted = arm_flags if arm else x86
        if not flags.intersection(wanted):
            line = (f"this bundle was specialised for {need} on the build host; this CPU lacks "
                    f"{'/'.join(wanted)}: expect it slower")  # fmt: skip
            if runtime.startswith("openvino"):
                line += " (correctness holds: OpenVINO falls back to another precision)"
            out.append(line)
    return out


def _mac_flags() -> set[str] | None:
    try:
        done = subprocess.run(["sysctl", "machdep.cpu.features", "machdep.cpu.leaf7_features", *_MAC_ARM],
                              capture_output=True, text=True, timeout=5, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    flags: set[str] = set()
    for line in done.stdout.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in _MAC_ARM:
            if value == "1":
                flags.add(_MAC_ARM[key])
        else:  # Intel Macs: "AVX2 AVX512F ...", named as Linux names them
            flags.update(v.lower().replace(".", "_").replace("avx512vnni", "avx512_vnni") for v in value.split())
    return flags or None
