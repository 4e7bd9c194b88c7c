"""``gpuxc export ENGINE BUNDLE``: hand a compiled bundle to an existing serving engine.

One module per engine (``ray``, ``triton``, ``kserve``), each with
``export(bundle: Path, out: Path, manifest: Manifest, **options) -> ExportResult`` writing its files
into ``out``. What they share lives here: reading the bundle, and writing the output folder the way
a bundle is written (a staging folder beside it, moved into place whole; an existing export is
replaced in one step and anything that is not an earlier export is never touched). docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpuxc.bundle.manifest import Manifest, read_manifest
from gpuxc.errors import BundleError, ExportError

# Written last into every export folder: what made it. A folder holding it may be replaced whole.
MARKER = ".gpuxc-export.json"


@dataclass
class ExportResult:
    """What an export wrote: the folder, its files (relative), and lines for the user."""

    engine: str
    path: Path
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"engine": self.engine, "path": str(self.path), "files": self.files, "notes": self.notes}


def open_bundle(bundle: Path) -> Manifest:
    """The bundle's manifest; a folder that is not a bundle is a BundleError."""
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder")
    return read_manifest(bundle)


def write_export(out: Path, engine: str, bundle: Path, write: Callable[[Path], list[str]]) -> list[str]:
    """Run ``write(staging)`` (it returns the files it wrote) and move the staging folder to ``out``.

    ``out`` may not exist, be empty, or be an earlier export (it holds :data:`MARKER`): it is then
    replaced whole, after ``write`` succeeded. Anything else is refused before anything is written.
    """
    from gpuxc.bundle import writer

    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ExportError(f"{out}: exists, is not empty and is not a gpuxc export; refusing to replace it "
                          "(give another --out, or remove it)")  # fmt: skip
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{parent}: cannot create the output folder ({exc.strerror})") from None
    # Named like a bundle's staging folder: a build that dies leaves one that the next cleans up.
    stage = Path(tempfile.mkdtemp(prefix=f"{writer.STAGING_PREFIX}{os.getpid()}-export-", dir=parent))
    try:
        files = sorted(write(stage))
        (stage / MARKER).write_text(json.dumps({"engine": engine, "bundle": bundle.name}, indent=2) + "\n",
                                    encoding="utf-8")  # fmt: skip
        try:
            writer.publish(stage, out.resolve())
        except BundleError as exc:
            raise ExportError(exc.message) from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return files
