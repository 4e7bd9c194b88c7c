"""The manifest's ``files`` list: every bundle file's size and sha256, and the check against it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpuxc.bundle.layout import MANIFEST_NAME
from gpuxc.digests import sha256_file

if TYPE_CHECKING:
    from gpuxc.bundle.manifest import FileEntry, Manifest


def _bundle_files(bundle: Path) -> list[tuple[str, Path]]:
    """(POSIX path relative to the bundle, path) of every file the manifest lists, sorted."""
    paths = sorted(p for p in bundle.rglob("*") if p.is_file())
    found = [(p.relative_to(bundle).as_posix(), p) for p in paths]
    return [(rel, p) for rel, p in found if rel != MANIFEST_NAME and "__pycache__" not in rel]


def file_entries(bundle: Path) -> list[FileEntry]:
    """The manifest's ``files``: every file of ``bundle`` but the manifest and byte-code caches."""
    from gpuxc.bundle.manifest import FileEntry

    return [FileEntry(path=rel, size=p.stat().st_size, sha256=sha256_file(p)) for rel, p in _bundle_files(bundle)]


def differences_from_manifest(bundle: Path, manifest: Manifest) -> list[str]:
    """Every way the bundle's files differ from the manifest: missing, changed *or unlisted*
    files (empty: the exact set the manifest lists). ``gpuxc verify --integrity`` uses it; the
    bundle runner's own load-time check looks at listed files only."""
    problems = []
    listed = {entry.path for entry in manifest.files}
    for entry in manifest.files:
        path = bundle / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: contents differ from the manifest")
    problems += [f"{rel}: not in the manifest" for rel, _ in _bundle_files(bundle) if rel not in listed]
    return problems
