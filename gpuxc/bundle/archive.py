"""``compile --archive``: ``<bundle>.tar.gz`` beside each bundle, byte-identical across rebuilds."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpuxc.errors import ConfigError

if TYPE_CHECKING:
    from gpuxc.bundle.writer import BundleResult

# 1980-01-01: the earliest zip time; used when SOURCE_DATE_EPOCH is not set.
DEFAULT_SOURCE_DATE_EPOCH = 315532800


def archive_mtime() -> int:
    """Archive entry times: $SOURCE_DATE_EPOCH (reproducible-builds.org), else a fixed date."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    try:
        return int(value) if value else DEFAULT_SOURCE_DATE_EPOCH
    except ValueError:
        raise ConfigError(f"SOURCE_DATE_EPOCH must be an integer, got '{value}'") from None


def write_archives(results: list[BundleResult], say: Callable[[str], None]) -> None:
    """``<bundle>.tar.gz`` beside each bundle of ``results`` (recorded in ``result.archive``)."""
    mtime = archive_mtime()
    for result in results:
        result.archive = result.path.with_name(result.path.name + ".tar.gz")
        write_archive(result.path, result.archive, mtime)
        say(f"[{result.target}] archive {result.archive}")


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
