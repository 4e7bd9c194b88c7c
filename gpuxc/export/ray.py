"""gpuxc export ray (issue 17): being written."""

from __future__ import annotations

from pathlib import Path

from gpuxc.bundle.manifest import Manifest
from gpuxc.errors import ExportError
from gpuxc.export import ExportResult


def export(bundle: Path, out: Path, manifest: Manifest) -> ExportResult:
    raise ExportError("gpuxc export ray is not built yet")
