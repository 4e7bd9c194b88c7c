"""The isolation settings, read from the environment on every call: whether to isolate, and the limits."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from gpuxc.errors import ConfigError
from gpuxc.sizes import parse_size

MEMORY_ENV = "GPUXC_MODEL_MEMORY_LIMIT"
TIMEOUT_ENV = "GPUXC_MODEL_TIMEOUT"
ISOLATION_ENV = "GPUXC_ISOLATION"
FAULT_ENV = "GPUXC_ISOLATION_TEST_FAULT"
DEFAULT_TIMEOUT_S = 900.0


def enabled() -> bool:
    """Whether steps run in a child: Linux, a Python to start, and not ``GPUXC_ISOLATION=0``."""
    if os.environ.get(ISOLATION_ENV, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    return sys.platform.startswith("linux") and bool(sys.executable)


def physical_memory() -> int | None:
    """This machine's RAM, or the cgroup (container) memory limit when lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(cgroup).read_text().strip()))
    return total


def memory_limit() -> int | None:
    """The child's address-space limit: ``$GPUXC_MODEL_MEMORY_LIMIT``, else physical memory."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if not text:
        return physical_memory()
    if text.lower() in ("0", "none", "off", "unlimited"):
        return None
    try:
        return parse_size(text)
    except ValueError:
        raise ConfigError(f"{MEMORY_ENV} must be a size like 8GiB, 512MiB or a number of bytes, got '{text}'") from None


def timeout_s() -> float | None:
    """How long the caller waits for a child: ``$GPUXC_MODEL_TIMEOUT`` seconds; None: no limit."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds (0: none), got '{text}'") from None
    return value if value > 0 else None
