"""The build cache: finished bundles stored under a key made of everything that decides them.

The key is gpuxc/cache/key.py's job. External-data files are not in the key, because finding
them means parsing the untrusted model; they are determined by the model file's bytes, and the
entry records their digests, which are checked on every hit.

An entry is ``<cache>/v1/<key[:2]>/<key>/{entry.json, bundle/}``. ``entry.json`` lists every
bundle file's size and sha256; a hit copies the files into the staging folder while hashing them,
so a corrupted or tampered entry is detected, discarded and rebuilt, never published. Entries are
written to a private temporary folder and renamed into place, so a killed build leaves no
half-written entry. Anything that goes wrong with the cache itself is a warning: the build goes on
without it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuxc.bundle.writer import remove_abandoned_staging
from gpuxc.digests import sha256_file
from gpuxc.errors import CacheError

CACHE_FORMAT = 1  # entries live under v<CACHE_FORMAT>/ and every key includes it: a bump orphans them all
ENTRY_NAME = "entry.json"
TMP_PREFIX = ".tmp-"
CACHE_DIR_ENV = "GPUXC_CACHE_DIR"
NO_CACHE_ENV = "GPUXC_NO_CACHE"

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """``$GPUXC_CACHE_DIR``, else the platform's user cache folder + ``gpuxc``."""
    if env := os.environ.get(CACHE_DIR_ENV):
        return Path(env)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gpuxc"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "gpuxc" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuxc"


def cache_disabled_by_env() -> bool:
    return os.environ.get(NO_CACHE_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass
class Entry:
    key: str
    path: Path
    info: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        return sum(int(f.get("size", 0)) for f in self.info.get("files", []))


class CorruptEntry(Exception):
    """An entry that failed a check on read; the message says which."""


class BuildCache:
    """One cache folder. Every method that touches the disk turns OSError into a warning."""

    def __init__(self, root: Path, progress: Progress | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        self.entries_dir = self.root / f"v{CACHE_FORMAT}"
        self.say = progress or (lambda _msg: None)

    def entry_dir(self, key: str) -> Path:
        return self.entries_dir / key[:2] / key

    def has(self, key: str) -> bool:
        return (self.entry_dir(key) / ENTRY_NAME).is_file()

    # -- reading ----------------------------------------------------------------------------

    def restore(self, key: str, dest: Path, external: Callable[[list[str]], dict[str, str]]) -> dict[str, Any] | None:
        """Copy the entry for ``key`` into the empty folder ``dest``, checking every digest.

        ``external(paths)`` returns the current sha256 of the model's external-data files; a
        change there is a miss. Returns the entry's info, or None on a miss. A corrupted entry
        is removed (and reported) so the caller rebuilds it.
        """
        folder = self.entry_dir(key)
        if not folder.is_dir():
            return None
        try:
            info = self._read_info(folder, key)
            recorded = info.get("external_data", {})
            if recorded and external(sorted(recorded)) != recorded:
                return None  # the weights beside the model changed: not this entry
            self._copy_verified(folder / "bundle", dest, info["files"])
        except CorruptEntry as exc:
            self.say(f"cache: entry {key[:12]} is corrupted ({exc}); discarded, rebuilding")
            self._discard(folder, dest)
            return None
        except OSError as exc:
            self.say(f"cache: cannot read entry {key[:12]} ({exc.strerror or exc}); rebuilding")
            _empty(dest)
            return None
        try:
            os.utime(folder / ENTRY_NAME)  # last use, for `gpuxc cache ls`
        except OSError:
            pass
        return info

    def _read_info(self, folder: Path, key: str) -> dict[str, Any]:
        try:
            info = json.loads((folder / ENTRY_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CorruptEntry(f"{ENTRY_NAME} unreadable: {exc}") from None
        if not isinstance(info, dict) or info.get("key") != key or not isinstance(info.get("files"), list):
            raise CorruptEntry(f"{ENTRY_NAME} does not describe this key")
        return info

    @staticmethod
    def _copy_verified(src: Path, dest: Path, files: list[dict[str, Any]]) -> None:
        expected = {f["path"]: f for f in files}
        present = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() or p.is_symlink()}
        if missing := sorted(set(expected) - present):
            raise CorruptEntry(f"missing {missing[0]}")
        if extra := sorted(present - set(expected)):
            raise CorruptEntry(f"unlisted file {extra[0]}")
        for rel, meta in sorted(expected.items()):
            source, target = src / rel, dest / rel
            if source.is_symlink() or ".." in Path(rel).parts or Path(rel).is_absolute():
                raise CorruptEntry(f"{rel} is not a plain file inside the entry")
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            size = 0
            with source.open("rb") as fin, target.open("wb") as fout:
                while block := fin.read(1 << 20):
                    digest.update(block)
                    size += len(block)
                    fout.write(block)
            if size != meta.get("size") or digest.hexdigest() != meta.get("sha256"):
                raise CorruptEntry(f"{rel} does not match its digest")
            shutil.copymode(source, target)

    def _discard(self, folder: Path, dest: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        _empty(dest)

    # -- writing ----------------------------------------------------------------------------

    def store(self, key: str, bundle_dir: Path, info: dict[str, Any]) -> bool:
        """Store a finished (staged) bundle; False, with a warning, if the cache cannot be written."""
        folder = self.entry_dir(key)
        if folder.is_dir():
            if self._current(folder, key, info):
                return True
            self._retire(folder)  # the same model file with other weights beside it: latest build wins
        tmp: Path | None = None
        try:
            # Private to this user: a cache entry becomes a published bundle without a rebuild.
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.entries_dir.mkdir(exist_ok=True)
            remove_abandoned_staging(self.entries_dir, TMP_PREFIX)
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=self.entries_dir))
            shutil.copytree(bundle_dir, tmp / "bundle")
            files = [
                {"path": p.relative_to(tmp / "bundle").as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted((tmp / "bundle").rglob("*"))
                if p.is_file()
            ]
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            record = {"key": key, "created": now, **info, "files": files}
            (tmp / ENTRY_NAME).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, folder)  # atomic; fails if a concurrent build stored it first
            tmp = None
            return True
        except OSError as exc:
            if not folder.is_dir():
                self.say(f"cache: could not store the bundle ({exc.strerror or exc}); continuing without")
            return folder.is_dir()
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _current(self, folder: Path, key: str, info: dict[str, Any]) -> bool:
        try:
            return self._read_info(folder, key).get("external_data", {}) == info.get("external_data", {})
        except CorruptEntry:
            return False

    def _retire(self, folder: Path) -> None:
        """Move an entry out of the way in one rename (readers see it or nothing), then delete it."""
        try:
            doomed = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-old-", dir=self.entries_dir))
            os.rename(folder, doomed / "entry")
            shutil.rmtree(doomed, ignore_errors=True)
        except OSError:
            pass

    # -- listing and clearing ---------------------------------------------------------------

    def entries(self) -> list[Entry]:
        out: list[Entry] = []
        if not self.entries_dir.is_dir():
            return out
        for folder in sorted(self.entries_dir.glob("??/*")):
            try:
                info = json.loads((folder / ENTRY_NAME).read_text(encoding="utf-8"))
                if not isinstance(info, dict):
                    raise ValueError("not an object")
                info["last_used"] = datetime.datetime.fromtimestamp(
                    (folder / ENTRY_NAME).stat().st_mtime, datetime.timezone.utc
                ).isoformat(timespec="seconds")
            except (OSError, ValueError) as exc:
                info = {"corrupted": str(exc)}
            out.append(Entry(folder.name, folder, info))
        return out

    def clear(self) -> tuple[int, int]:
        """Remove every entry; returns (entries, bytes) removed."""
        entries = self.entries()
        freed = sum(e.size_bytes for e in entries)
        if self.entries_dir.is_dir():
            try:
                shutil.rmtree(self.entries_dir)
            except OSError as exc:
                raise CacheError(f"{self.entries_dir}: cannot remove the cache ({exc.strerror or exc})") from None
        return len(entries), freed


def _empty(folder: Path) -> None:
    for child in folder.iterdir() if folder.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
