"""Memory sizes: the one grammar gpuxc reads them in, and the two ways it writes them.

Read (:func:`parse_size`): a number of bytes, optionally with a unit, case-insensitive:
``1073741824``, ``512 MB``, ``2GB``, ``1.5GiB``, ``8G``. ``K``/``M``/``G``/``T`` are powers of
1000, ``Ki``/``Mi``/``Gi``/``Ti`` powers of 1024; a trailing ``B`` is optional. Used by
``runtime.gpu.memory`` in gpux.yml and by ``$GPUXC_MODEL_MEMORY_LIMIT``; each caller words its own
error, since each names its own setting.

Written two ways, each matching the setting the message is about: :func:`format_size_decimal`
(``1.5 GB``: the build's memory budget, which gpux.yml states in decimal units) and
:func:`format_size_binary` (``8 GiB``: the isolation child's address-space limit, a power of two
on most machines).
"""

from __future__ import annotations

import re

SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?)(B?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"8GiB"``, ``"512M"``, ``"1.5GB"``, ``"8000000000"`` → bytes; ``ValueError`` for anything else."""
    match = SIZE_RE.fullmatch(text)
    if not match or (match.group(3) and not match.group(2)):  # "2iB": a binary mark needs a unit
        raise ValueError(f"not a memory size: {text!r}")
    number, unit, binary, _b = match.groups()
    base = 1024 if binary or unit == "" else 1000
    return int(float(number) * base ** "_KMGT".index(unit.upper() or "_"))


def is_size(text: str, *, unit_ends_in_b: bool = False) -> bool:
    """Whether :func:`parse_size` reads ``text``; with ``unit_ends_in_b``, only the spellings
    gpux.yml has always accepted (``512MB``, ``2GiB``, ``1073741824``; not ``2G``)."""
    match = SIZE_RE.fullmatch(text)
    if match is None:
        return False
    _number, unit, binary, b = match.groups()
    if binary and not unit:
        return False
    return not unit_ends_in_b or b != "" or (unit == "" and binary == "")


def format_size_decimal(n: int | float) -> str:
    """``512 B``, ``1.5 KB``, ``2.0 GB``: powers of 1000, one decimal, GB at most."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # not reached: the loop returns at GB


def format_size_binary(n: int) -> str:
    """``512 bytes``, ``1.5 KiB``, ``8 GiB``: powers of 1024, three significant digits."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"
