"""sha256 of files and folders: bundle integrity, the build cache key and model identity.

Kept free of heavy imports: the build cache's warm path hashes before anything loads onnx.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root: Path, suffixes: tuple[str, ...] | None = None) -> str:
    """sha256 over the relative paths and contents of the files under ``root``, in sorted order.

    ``__pycache__`` is skipped: bytecode follows from the sources.
    """
    digest = hashlib.sha256()
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and (suffixes is None or p.name.endswith(suffixes))
    )  # fmt: skip
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()
