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

from gpuxc.bundle.layout import MANIFEST_NAME
from gpuxc.errors import BundleError

if TYPE_CHECKING:
    from gpuxc.bundle.manifest import Manifest

# jinja2 and the manifest models are imported where used: a warm rebuild from the build cache stages
# and publishes bundles without loading them.

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


def write_variant_adapters(bundle: Path, context: dict[str, Any],
                           adapters: dict[str, tuple[str, tuple[Path, ...]]]) -> None:  # fmt: skip
    """Copy each fallback target's adapter (``adapters``: target -> (template, template dirs)) to
    ``runner/runtime_<target>.py``, byte for byte like the primary's (a ``.j2`` one rendered)."""
    from gpuxc.bundle.codegen import render
    from gpuxc.bundle.runner_source import variant_adapter_files

    for (rel, source), (adapter, extra_dirs) in zip(variant_adapter_files(adapters).items(), adapters.values(),
                                                    strict=True):  # fmt: skip
        if source.name.endswith(".j2"):
            (bundle / rel).write_text(render(adapter, context, extra_dirs), encoding="utf-8")
        else:
            shutil.copyfile(source, bundle / rel)


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    (bundle / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
