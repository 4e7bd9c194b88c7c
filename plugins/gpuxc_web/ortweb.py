"""The ONNX Runtime Web files a web bundle vendors, at one pinned version, never from a CDN at run time.

Where they come from, in this order: a local copy the user names (``build.options.web.ort_web_dir``,
else ``$GPUXC_ORT_WEB_DIR``: a ``node_modules`` folder, the unpacked package, its ``dist/`` or the
``.tgz``), else gpuxc's cache, else the npm registry, fetched once into the cache. The tarball is
checked against the registry's sha512 integrity string before anything is read from it, and every
file, whichever the source, against the sha256 it has in the pinned release: a patched or different
build is refused, not shipped. A cache entry is written to a temporary folder and renamed into
place, so a concurrent build never sees half of one; one whose files changed is fetched again.

``python -m gpuxc_web.ortweb`` fills the cache (CI runs it once before the tests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from gpuxc.cache.store import default_cache_dir
from gpuxc.digests import sha256_file
from gpuxc.errors import CompileError, TargetUnavailable, first_line

ORT_WEB_VERSION = "1.30.0"
ORT_WEB_INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
ORT_WEB_URL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz"
ORT_WEB_DIR_ENV = "GPUXC_ORT_WEB_DIR"

# The entry module and the WASM pair it loads itself from ort.env.wasm.wasmPaths. In 1.30.0,
# ort.webgpu.min.mjs asks for the *asyncify* pair (its WebGPU EP is the native one), not the JSEP
# pair that ort.min.mjs loads: vendoring the wrong pair gives a page that 404s at session creation.
ORT_WEB_ENTRY = "ort.webgpu.min.mjs"
ORT_WEB_FILE_SHA256: dict[str, str] = {
    ORT_WEB_ENTRY: "3dffff71811bc13a3a3d9591c57ca5ee5735b8f5f3eaf789510b02bb040ae3a0",
    "ort-wasm-simd-threaded.asyncify.mjs": "3d1c85995364bb643302fc6fd877a0c3ba5ae72401815e0f24828a53d9191e28",
    "ort-wasm-simd-threaded.asyncify.wasm": "39f9f0894d478800487ed9f7dbe92618498db320cf55c8e3d89adff8dce658da",
}
ORT_WEB_FILES = tuple(ORT_WEB_FILE_SHA256)

FETCH_TIMEOUT_S = 60.0
MAX_TARBALL_BYTES = 64 << 20  # the 1.30.0 tarball is 33 MB
MAX_MEMBER_BYTES = 64 << 20
ENTRY_RECORD = "ortweb.json"  # in a cache entry: version, integrity, files {name: sha256}
PACKAGE_ROOT = "package"  # npm tarballs hold the package under package/
HINT_LOCAL = "give build.options.web.ort_web_dir (or $GPUXC_ORT_WEB_DIR) or run with network once"

Source = Literal["cache", "registry", "local"]


@dataclass(frozen=True)
class OrtWeb:
    """The folder holding ``ORT_WEB_FILES`` (copy them into the bundle's web/ort/) and where they came from."""

    folder: Path
    version: str
    integrity: str
    source: Source
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256

    def facts(self) -> dict[str, Any]:
        """What the manifest records about the vendored runtime."""
        return {"version": self.version, "integrity": self.integrity, "source": self.source, "files": dict(self.files)}


def cache_entry_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "npm" / f"onnxruntime-web-{ORT_WEB_VERSION}"


def ensure_ort_web(cache_dir: Path | None = None, local: Path | None = None) -> OrtWeb:
    """The pinned ONNX Runtime Web files: from ``local`` (or ``$GPUXC_ORT_WEB_DIR``), the cache, or the registry."""
    if local is None and (env := os.environ.get(ORT_WEB_DIR_ENV, "").strip()):
        local = Path(env)
    if local is not None:
        return _from_local(Path(local).expanduser(), cache_dir)
    entry = cache_entry_dir(cache_dir)
    if (cached := _cached(entry)) is not None:
        return cached
    data = fetch_tarball(ORT_WEB_URL)
    check_integrity(data, ORT_WEB_URL)
    return _store(entry, _members(data, ORT_WEB_URL), "registry", ORT_WEB_URL)


def fetch_tarball(url: str | None = None) -> bytes:
    """The tarball's bytes (``ORT_WEB_URL`` by default), at most ``MAX_TARBALL_BYTES``; any failure is one
    TargetUnavailable line."""
    url = url or ORT_WEB_URL
    where = urllib.parse.urlsplit(url).hostname or url
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 (a pinned https URL)
            data: bytes = response.read(MAX_TARBALL_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TargetUnavailable(
            f"cannot fetch onnxruntime-web {ORT_WEB_VERSION} from {where} ({first_line(exc, 200)})", hint=HINT_LOCAL
        ) from None
    if len(data) > MAX_TARBALL_BYTES:
        raise TargetUnavailable(
            f"onnxruntime-web {ORT_WEB_VERSION} from {where} is over {MAX_TARBALL_BYTES >> 20} MB: refused",
            hint=HINT_LOCAL,
        )
    return data


def sri_sha512(data: bytes) -> str:
    """npm's integrity string for ``data`` (Subresource Integrity: ``sha512-`` + base64)."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def check_integrity(data: bytes, where: str) -> None:
    got = sri_sha512(data)
    if not hmac.compare_digest(got, ORT_WEB_INTEGRITY):
        raise CompileError(
            f"onnxruntime-web {ORT_WEB_VERSION} from {where} failed its integrity check: "
            f"expected {ORT_WEB_INTEGRITY}, got {got}",
            hint="a proxy or mirror changed the tarball; fetch it again or give a local copy",
        )


def _members(data: bytes, where: str) -> dict[str, bytes]:
    """``ORT_WEB_FILES`` read out of the tarball (never extracted by tarfile), after checking its members."""
    wanted = {f"{PACKAGE_ROOT}/dist/{name}": name for name in ORT_WEB_FILES}
    found: dict[str, bytes] = {}
    version: str | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts:
                    raise CompileError(f"{where}: refused, the archive has an unsafe member path {member.name!r}")
                if member.name not in wanted and member.name != f"{PACKAGE_ROOT}/package.json":
                    continue
                if not member.isreg():
                    raise CompileError(f"{where}: refused, {member.name!r} is not a regular file in the archive")
                if member.size > MAX_MEMBER_BYTES:
                    raise CompileError(f"{where}: refused, {member.name!r} is over {MAX_MEMBER_BYTES >> 20} MB")
                name = wanted.get(member.name)
                if name in found:
                    raise CompileError(f"{where}: refused, the archive holds {member.name!r} twice")
                reader = tar.extractfile(member)
                content = reader.read() if reader is not None else b""
                if name is None:
                    version = _version_of(content, f"{where}:{member.name}")
                else:
                    found[name] = content
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CompileError(f"{where}: not a readable .tgz ({first_line(exc, 200)})") from None
    _check_version(version, where)
    if missing := [name for name in ORT_WEB_FILES if name not in found]:
        raise TargetUnavailable(f"{where} has no dist/{', dist/'.join(missing)}", hint=HINT_LOCAL)
    return found


def _version_of(package_json: bytes, where: str) -> str:
    try:
        version = json.loads(package_json).get("version")
    except (ValueError, AttributeError):
        raise TargetUnavailable(f"{where} is not a readable package.json") from None
    return str(version)


def _check_version(version: str | None, where: str) -> None:
    """A stated version must be the pinned one; with none stated, the pinned file digests decide."""
    if version is not None and version != ORT_WEB_VERSION:
        raise TargetUnavailable(
            f"{where} is onnxruntime-web {version}; gpuxc pins {ORT_WEB_VERSION}",
            hint=f"install onnxruntime-web@{ORT_WEB_VERSION} there, or leave ort_web_dir unset to fetch it",
        )


def _check_file_digest(name: str, digest: str, where: str) -> None:
    if digest != ORT_WEB_FILE_SHA256[name]:
        raise CompileError(
            f"{where}/{name} is not the file onnxruntime-web {ORT_WEB_VERSION} ships: "
            f"sha256 expected {ORT_WEB_FILE_SHA256[name]}, got {digest}",
            hint="reinstall the package; gpuxc vendors only the pinned release's files",
        )


def _cached(entry: Path) -> OrtWeb | None:
    """The cache entry if its record is current and every file still has its recorded sha256."""
    try:
        record = json.loads((entry / ENTRY_RECORD).read_text(encoding="utf-8"))
        files = {name: sha256_file(entry / name) for name in ORT_WEB_FILES}
    except (OSError, ValueError):
        return None
    if (
        not isinstance(record, dict)
        or record.get("version") != ORT_WEB_VERSION
        or record.get("integrity") != ORT_WEB_INTEGRITY
        or record.get("files") != files
        or files != ORT_WEB_FILE_SHA256
    ):
        return None
    return OrtWeb(entry, ORT_WEB_VERSION, ORT_WEB_INTEGRITY, "cache", files)


def _store(entry: Path, contents: dict[str, bytes], source: Source, where: str) -> OrtWeb:
    """Write ``contents`` as the cache entry: a temporary folder renamed into place."""
    files = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    for name, digest in files.items():
        _check_file_digest(name, digest, f"{where}:dist")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    except OSError as exc:
        raise TargetUnavailable(
            f"cannot write the onnxruntime-web cache at {entry.parent} ({first_line(exc)})"
        ) from None
    try:
        for name, data in contents.items():
            (tmp / name).write_bytes(data)
        record = {"version": ORT_WEB_VERSION, "integrity": ORT_WEB_INTEGRITY, "files": files}
        (tmp / ENTRY_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        _swap_into_place(tmp, entry)
    except OSError as exc:
        raise TargetUnavailable(f"cannot write the onnxruntime-web cache at {entry} ({first_line(exc)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if (stored := _cached(entry)) is None:
        raise TargetUnavailable(f"the onnxruntime-web cache at {entry} changed while it was written; build again")
    return OrtWeb(entry, ORT_WEB_VERSION, ORT_WEB_INTEGRITY, source, stored.files)


def _swap_into_place(tmp: Path, entry: Path) -> None:
    """Rename ``tmp`` to ``entry``; a stale entry is renamed aside first, and one another build
    finished meanwhile is kept (it holds the same pinned files)."""
    if entry.exists() and _cached(entry) is None:
        stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=entry.parent))
        try:
            entry.rename(stale / "entry")
        except OSError:
            pass  # another build moved it already
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(entry)
    except OSError:
        if _cached(entry) is None:
            raise


def _from_local(path: Path, cache_dir: Path | None) -> OrtWeb:
    """A user's copy: a .tgz (read into the cache) or a folder used in place."""
    where = str(path)
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TargetUnavailable(f"cannot read {where} ({first_line(exc)})") from None
        return _store(cache_entry_dir(cache_dir), _members(data, where), "local", where)
    dist, package_json = _local_layout(path)
    if dist is None:
        raise TargetUnavailable(
            f"{where} holds no onnxruntime-web files (looked for {', '.join(ORT_WEB_FILES)} in it, its dist/ "
            "and node_modules/onnxruntime-web/dist/)",
            hint="point build.options.web.ort_web_dir at node_modules, the package folder, its dist/ or the .tgz",
        )
    version = None
    if package_json is not None:
        try:
            version = _version_of(package_json.read_bytes(), str(package_json))
        except OSError as exc:
            raise TargetUnavailable(f"cannot read {package_json} ({first_line(exc)})") from None
    _check_version(version, where)
    try:
        files = {name: sha256_file(dist / name) for name in ORT_WEB_FILES}
    except OSError as exc:
        raise TargetUnavailable(f"cannot read the onnxruntime-web files in {dist} ({first_line(exc)})") from None
    for name, digest in files.items():
        _check_file_digest(name, digest, str(dist))
    return OrtWeb(dist.absolute(), ORT_WEB_VERSION, ORT_WEB_INTEGRITY, "local", files)


def _local_layout(path: Path) -> tuple[Path | None, Path | None]:
    """(the folder holding the files, the package.json saying their version) for the accepted layouts."""
    for package in (path / "node_modules" / "onnxruntime-web", path / "onnxruntime-web", path):
        if all((package / "dist" / name).is_file() for name in ORT_WEB_FILES):
            return package / "dist", _file_or_none(package / "package.json")
    if all((path / name).is_file() for name in ORT_WEB_FILES):  # dist/ itself, or a gpuxc cache entry
        return path, _file_or_none(path.parent / "package.json") or _file_or_none(path / ENTRY_RECORD)
    return None, None


def _file_or_none(path: Path) -> Path | None:
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """Fill the cache (or check a local copy) and print the folder: ``python -m gpuxc_web.ortweb [LOCAL]``."""
    args = sys.argv[1:] if argv is None else argv
    try:
        ort_web = ensure_ort_web(local=Path(args[0]) if args else None)
    except (CompileError, TargetUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    print(ort_web.folder)
    print(f"onnxruntime-web {ort_web.version} ({ort_web.source})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
