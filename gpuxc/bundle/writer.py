"""Writing a bundle: staging folder → generated runner → manifest → atomic move into place.

A bundle is assembled in a hidden staging folder beside its final path (same
file system, so the final ``rename`` is atomic). A failed build removes its
staging folder and never touches an existing bundle at the final path; a
successful one replaces it only after everything, manifest last, is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuxc.bundle import layout
from gpuxc.digests import sha256_file
from gpuxc.errors import BundleError, ConfigError

if TYPE_CHECKING:
    import numpy as np

    from gpuxc.bundle.manifest import FileEntry, Manifest

# The manifest's file name (gpuxc.bundle.manifest re-exports it); defined here, where the layout is.
from gpuxc.bundle.layout import MANIFEST_NAME  # noqa: E402,F401 (re-exported)

# numpy, jinja2, onnx and the manifest models are imported where used: a warm rebuild from the build cache stages,
# archives and publishes bundles without loading them.

STAGING_PREFIX = ".gpuxc-staging-"

@dataclass
class BundleResult:
    """What a compile wrote for one target (built, or restored from the build cache)."""

    target: str
    path: Path
    verification: dict[str, Any]
    variant: str = "fp32"
    archive: Path | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"target": self.target, "path": str(self.path), "variant": self.variant,
               "verification": self.verification}  # fmt: skip
        if self.archive is not None:
            out["archive"] = str(self.archive)
        return out


# 1980-01-01: the earliest zip time; used when SOURCE_DATE_EPOCH is not set.
DEFAULT_SOURCE_DATE_EPOCH = 315532800


def archive_mtime() -> int:
    """Archive entry times: $SOURCE_DATE_EPOCH (reproducible-builds.org), else a fixed date."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    try:
        return int(value) if value else DEFAULT_SOURCE_DATE_EPOCH
    except ValueError:
        raise ConfigError(f"SOURCE_DATE_EPOCH must be an integer, got '{value}'") from None


def write_archives(results: list[BundleResult], say: Any) -> None:
    """``compile --archive``: ``<bundle>.tar.gz`` beside each bundle."""
    mtime = archive_mtime()
    for result in results:
        result.archive = result.path.with_name(result.path.name + ".tar.gz")
        write_archive(result.path, result.archive, mtime)
        say(f"[{result.target}] archive {result.archive}")


@contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A fresh staging folder next to ``final``, removed unless ``publish`` moved it."""
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"{parent}: cannot create output folder ({exc.strerror})") from None
    if final.exists() and not final.is_dir():
        raise BundleError(f"{final}: exists and is not a folder; refusing to replace it")
    if final.is_dir() and any(final.iterdir()) and not (final / MANIFEST_NAME).is_file():
        raise BundleError(f"{final}: exists and is not a gpuxc bundle; refusing to replace it")
    try:
        remove_abandoned_staging(parent)
        path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{final.name}-", dir=parent))
    except OSError as exc:
        raise BundleError(f"{parent}: cannot write here ({exc.strerror})") from None
    try:
        # mkdtemp makes the folder private (0700); the published bundle gets a new folder's usual mode.
        mask = os.umask(0)
        os.umask(mask)
        path.chmod(0o777 & ~mask)
        yield path
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def remove_abandoned_staging(parent: Path, prefix: str = STAGING_PREFIX) -> list[str]:
    """Remove staging folders of builds that died (killed, power loss): their pid is in the name,
    right after ``prefix``. A folder whose process still runs belongs to a concurrent build and is
    left alone. The build cache uses the same scheme for its temporary entries.
    """
    removed = []
    for path in parent.glob(prefix + "*"):
        pid_text = path.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def publish(staging: Path, final: Path) -> None:
    """Move ``staging`` to ``final``. An existing bundle is swapped out in one atomic step where
    the OS allows (Linux ``renameat2(RENAME_EXCHANGE)``), so no moment leaves ``final`` missing."""
    if final.exists() and _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old bundle
        return
    old: Path | None = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-old-", dir=final.parent))
        os.rmdir(old)
        os.rename(final, old)
    try:
        os.rename(staging, final)
    except OSError as exc:
        if old is not None:
            os.rename(old, final)  # put the good bundle back
        raise BundleError(f"{final}: cannot move the bundle into place ({exc.strerror})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def write_reference(bundle: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    ref = bundle / layout.REFERENCE_DIR
    ref.mkdir(parents=True, exist_ok=True)
    write_npz(ref / "inputs.npz", {k: _storable(v) for k, v in inputs.items()})
    write_npz(ref / "outputs.npz", {k: _storable(v) for k, v in outputs.items()})


# The earliest time a zip entry can carry: reference files must not record when they were built.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import numpy as np

    """Like ``np.savez``, byte for byte the same on every build: fixed entry times, sorted order.

    (``np.savez`` stamps each member with the current time, so two builds would differ.)
    """
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def write_archive(bundle: Path, archive: Path, mtime: int) -> None:
    """``<bundle>.tar.gz`` that is byte-identical for identical bundle contents.

    Sorted entries, one fixed mtime, uid/gid 0 with no names, modes 0644/0755, and a gzip
    header without a timestamp or file name (reproducible-builds.org's archive rules).
    """
    import gzip
    import tarfile

    tmp = archive.with_name(archive.name + ".tmp")
    paths = sorted(p for p in bundle.rglob("*") if "__pycache__" not in p.parts)
    with tmp.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in [bundle, *paths]:
                rel = bundle.name if path == bundle else f"{bundle.name}/{path.relative_to(bundle).as_posix()}"
                info = tar.gettarinfo(str(path), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = mtime
                info.mode = 0o755 if path.is_dir() else 0o644
                info.pax_headers = {}
                if path.is_file():
                    with path.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    os.replace(tmp, archive)


def _storable(value: np.ndarray) -> np.ndarray:
    # Object arrays would need pickle: sequences of maps become dense arrays and string
    # tensors fixed-width unicode.
    from gpuxc.bundle.compare import dense

    value = dense(value)
    return value.astype(str) if value.dtype == object else value


def write_runner(bundle: Path, context: dict[str, Any], adapter: str, extra_dirs: tuple[Path, ...] = ()) -> None:
    """Copy the runner and the target's adapter into ``bundle`` and render the per-build files.

    The runner sources are copied byte for byte: no value of the build reaches them (the runner
    reads the manifest at run time). A third party's adapter may still be a ``.py.j2`` template,
    rendered with ``context`` like README.md.
    """
    from gpuxc.bundle.codegen import render
    from gpuxc.bundle.runner_source import RENDERED_FILES, runner_files

    for rel, source in runner_files(adapter, extra_dirs).items():
        dest = bundle / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.name.endswith(".j2"):
            dest.write_text(render(adapter, context, extra_dirs), encoding="utf-8")
        else:
            shutil.copyfile(source, dest)
    for template, rel in RENDERED_FILES.items():
        (bundle / rel).write_text(render(template, context, extra_dirs), encoding="utf-8")


def file_entries(bundle: Path) -> list[FileEntry]:
    from gpuxc.bundle.manifest import FileEntry

    entries = []
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel == MANIFEST_NAME or "__pycache__" in rel:
            continue
        entries.append(FileEntry(path=rel, size=path.stat().st_size, sha256=sha256_file(path)))
    return entries


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    (bundle / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")


def bundle_name(name: str, version: str, target: str) -> str:
    return f"{name}-{version}-{target}"


def integrity_problems(bundle: Path, manifest: Manifest) -> list[str]:
    """What differs from the manifest: missing, changed or unlisted files (empty: intact)."""
    problems = []
    listed = {entry.path for entry in manifest.files}
    for entry in manifest.files:
        path = bundle / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: contents differ from the manifest")
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel != MANIFEST_NAME and rel not in listed and "__pycache__" not in rel:
            problems.append(f"{rel}: not in the manifest")
    return problems
