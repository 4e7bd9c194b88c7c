"""Vendoring onnxruntime-web: registry fetch checked by integrity, safe tarball reading, local copies,
the cache (reuse offline, corrupted entries fetched again).

Most tests use a small fake package and patch the pinned digests to its own: what they check is the
mechanism. The pins themselves are checked by the one test that fetches the real tarball (`network`).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpuxc_web import ortweb
from gpuxc_web.ortweb import ORT_WEB_FILES, ORT_WEB_VERSION, ensure_ort_web, sri_sha512

from gpuxc.errors import CompileError, TargetUnavailable

FAKE = {name: f"// fake {name}\n".encode() * (i + 1) for i, name in enumerate(ORT_WEB_FILES)}


def make_tgz(
    files: dict[str, bytes] | None = None, version: str = ORT_WEB_VERSION, extra: list[tarfile.TarInfo] | None = None
) -> bytes:
    """An npm-style tarball: package/package.json + package/dist/<files>, then ``extra`` members."""
    members = {"package/package.json": json.dumps({"name": "onnxruntime-web", "version": version}).encode()}
    members |= {f"package/dist/{name}": data for name, data in (FAKE if files is None else files).items()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return buf.getvalue()


def unpack(tgz: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return into / "package"


@pytest.fixture
def pinned_to_fake(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Pin the fake package (its integrity and file digests) and clear $GPUXC_ORT_WEB_DIR; returns its tarball."""
    tgz = make_tgz()
    monkeypatch.setattr(ortweb, "ORT_WEB_INTEGRITY", sri_sha512(tgz))
    monkeypatch.setattr(ortweb, "ORT_WEB_FILE_SHA256", {n: hashlib.sha256(d).hexdigest() for n, d in FAKE.items()})
    monkeypatch.delenv(ortweb.ORT_WEB_DIR_ENV, raising=False)
    return tgz


class Registry:
    """A loopback HTTP server standing in for registry.npmjs.org: serves ``payload``, counts requests."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.requests = 0
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                registry.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(registry.payload)))
                self.end_headers()
                self.wfile.write(registry.payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/onnxruntime-web-{ORT_WEB_VERSION}.tgz"


@pytest.fixture
def registry(pinned_to_fake: bytes, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    reg = Registry(pinned_to_fake)
    thread = threading.Thread(target=reg.server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(ortweb, "ORT_WEB_URL", reg.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield reg
    reg.server.shutdown()
    reg.server.server_close()
    thread.join()


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_fetches_from_the_registry_checks_integrity_and_caches(registry: Registry, tmp_path: Path) -> None:
    got = ensure_ort_web(cache_dir=tmp_path)
    assert got.source == "registry" and got.version == ORT_WEB_VERSION
    assert got.folder == tmp_path / "npm" / f"onnxruntime-web-{ORT_WEB_VERSION}"
    assert {n: (got.folder / n).read_bytes() for n in ORT_WEB_FILES} == FAKE
    assert got.facts() == {"version": ORT_WEB_VERSION, "integrity": ortweb.ORT_WEB_INTEGRITY, "source": "registry",
                           "files": ortweb.ORT_WEB_FILE_SHA256}  # fmt: skip
    assert not [p for p in got.folder.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_integrity_mismatch_is_refused_naming_both_digests(registry: Registry, tmp_path: Path) -> None:
    registry.payload = make_tgz({**FAKE, ORT_WEB_FILES[0]: b"// tampered\n"})
    with pytest.raises(CompileError, match="integrity check") as err:
        ensure_ort_web(cache_dir=tmp_path)
    assert ortweb.ORT_WEB_INTEGRITY in str(err.value) and sri_sha512(registry.payload) in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "npm" / f"onnxruntime-web-{ORT_WEB_VERSION}").exists()


def test_cache_is_reused_without_network(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_ort_web(cache_dir=tmp_path)
    offline(monkeypatch)
    got = ensure_ort_web(cache_dir=tmp_path)
    assert got.source == "cache" and registry.requests == 1
    assert {n: (got.folder / n).read_bytes() for n in ORT_WEB_FILES} == FAKE


def test_a_corrupted_cache_entry_is_fetched_again(registry: Registry, tmp_path: Path) -> None:
    folder = ensure_ort_web(cache_dir=tmp_path).folder
    (folder / ORT_WEB_FILES[2]).write_bytes(b"corrupted")
    got = ensure_ort_web(cache_dir=tmp_path)
    assert got.source == "registry" and registry.requests == 2
    assert (got.folder / ORT_WEB_FILES[2]).read_bytes() == FAKE[ORT_WEB_FILES[2]]


def test_concurrent_builds_fill_the_cache_once_and_see_whole_folders(registry: Registry, tmp_path: Path) -> None:
    results: list[object] = []

    def build() -> None:
        try:
            got = ensure_ort_web(cache_dir=tmp_path)
            results.append({n: (got.folder / n).read_bytes() for n in ORT_WEB_FILES})
        except Exception as exc:  # noqa: BLE001 (reported by the assert below)
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [FAKE] * 4
    assert sorted(p.name for p in (tmp_path / "npm").iterdir()) == [f"onnxruntime-web-{ORT_WEB_VERSION}"]


def test_no_network_no_cache_no_local_copy_is_one_line_with_a_hint(
    pinned_to_fake: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline(monkeypatch)
    with pytest.raises(TargetUnavailable) as err:
        ensure_ort_web(cache_dir=tmp_path)
    message = str(err.value)
    assert message.startswith(f"cannot fetch onnxruntime-web {ORT_WEB_VERSION} from registry.npmjs.org (")
    assert "Network is unreachable" in message and "build.options.web.ort_web_dir" in message and "\n" not in message


def test_an_oversized_download_is_refused(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ortweb, "MAX_TARBALL_BYTES", 100)
    with pytest.raises(TargetUnavailable, match="is over"):
        ensure_ort_web(cache_dir=tmp_path)


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


@pytest.mark.parametrize(
    "member, why",
    [
        (_member("package/../../escape.txt"), "unsafe member path"),
        (_member("/etc/escape.txt"), "unsafe member path"),
        (_member(f"package/dist/{ORT_WEB_FILES[1]}", tarfile.SYMTYPE, link="/etc/passwd"), "not a regular file"),
        (_member(f"package/dist/{ORT_WEB_FILES[1]}"), "twice"),
    ],
)
def test_unsafe_tarball_members_are_refused(
    pinned_to_fake: bytes, tmp_path: Path, member: tarfile.TarInfo, why: str
) -> None:
    files = {n: d for n, d in FAKE.items() if n != ORT_WEB_FILES[1] or why == "twice"}
    tgz = tmp_path / "ort.tgz"
    tgz.write_bytes(make_tgz(files, extra=[member]))
    with pytest.raises(CompileError, match=why):
        ensure_ort_web(cache_dir=tmp_path / "cache", local=tgz)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache" / "npm").exists()


@pytest.mark.parametrize("layout", ["package", "dist", "node_modules", "project", "tgz"])
def test_local_copies_are_accepted(pinned_to_fake: bytes, tmp_path: Path, layout: str) -> None:
    package = unpack(pinned_to_fake, tmp_path / "unpacked")
    (tmp_path / "project" / "node_modules").mkdir(parents=True)
    package.rename(tmp_path / "project" / "node_modules" / "onnxruntime-web")
    package = tmp_path / "project" / "node_modules" / "onnxruntime-web"
    (tmp_path / "ort.tgz").write_bytes(pinned_to_fake)
    given = {"package": package, "dist": package / "dist", "node_modules": package.parent,
             "project": tmp_path / "project", "tgz": tmp_path / "ort.tgz"}[layout]  # fmt: skip
    got = ensure_ort_web(cache_dir=tmp_path / "cache", local=given)
    assert got.source == "local" and got.files == ortweb.ORT_WEB_FILE_SHA256
    assert {n: (got.folder / n).read_bytes() for n in ORT_WEB_FILES} == FAKE
    if layout != "tgz":
        assert got.folder == (package / "dist").absolute()  # used in place, nothing copied to the cache
        assert not (tmp_path / "cache").exists()


def test_the_environment_variable_names_a_local_copy(
    pinned_to_fake: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = unpack(pinned_to_fake, tmp_path)
    monkeypatch.setenv(ortweb.ORT_WEB_DIR_ENV, str(package))
    offline(monkeypatch)
    got = ensure_ort_web(cache_dir=tmp_path / "cache")
    assert got.source == "local" and got.folder == (package / "dist").absolute()


@pytest.mark.parametrize("as_tgz", [False, True])
def test_a_local_copy_of_another_version_is_refused(pinned_to_fake: bytes, tmp_path: Path, as_tgz: bool) -> None:
    tgz = make_tgz(version="1.29.1")
    (tmp_path / "old.tgz").write_bytes(tgz)
    given = tmp_path / "old.tgz" if as_tgz else unpack(tgz, tmp_path)
    with pytest.raises(TargetUnavailable, match=rf"is onnxruntime-web 1\.29\.1; gpuxc pins {ORT_WEB_VERSION}"):
        ensure_ort_web(cache_dir=tmp_path / "cache", local=given)


def test_a_cache_entry_given_as_a_local_copy_is_used_in_place(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What CI does: fill one cache, then hand its folder to builds that use caches of their own."""
    entry = ensure_ort_web(cache_dir=tmp_path / "warm").folder
    offline(monkeypatch)
    monkeypatch.setenv(ortweb.ORT_WEB_DIR_ENV, str(entry))
    got = ensure_ort_web(cache_dir=tmp_path / "other")
    assert got.source == "local" and got.folder == entry and not (tmp_path / "other").exists()


def test_a_dist_folder_without_package_json_is_judged_by_the_pinned_digests(
    pinned_to_fake: bytes, tmp_path: Path
) -> None:
    dist = unpack(pinned_to_fake, tmp_path) / "dist"
    (dist.parent / "package.json").unlink()
    assert ensure_ort_web(cache_dir=tmp_path / "cache", local=dist).files == ortweb.ORT_WEB_FILE_SHA256
    (dist / ORT_WEB_FILES[1]).write_bytes(b"// another build\n")
    with pytest.raises(CompileError, match=f"{ORT_WEB_FILES[1]} is not the file onnxruntime-web {ORT_WEB_VERSION}"):
        ensure_ort_web(cache_dir=tmp_path / "cache", local=dist)


def test_a_local_folder_without_the_files_is_refused(pinned_to_fake: bytes, tmp_path: Path) -> None:
    package = unpack(pinned_to_fake, tmp_path)
    (package / "dist" / ORT_WEB_FILES[2]).unlink()
    with pytest.raises(TargetUnavailable, match="holds no onnxruntime-web files") as err:
        ensure_ort_web(cache_dir=tmp_path / "cache", local=package)
    assert "ort_web_dir" in str(err.value)


def test_a_local_file_that_is_not_the_pinned_release_is_refused(pinned_to_fake: bytes, tmp_path: Path) -> None:
    package = unpack(pinned_to_fake, tmp_path)
    (package / "dist" / ORT_WEB_FILES[0]).write_bytes(b"// patched\n")
    with pytest.raises(CompileError, match=f"{ORT_WEB_FILES[0]} is not the file onnxruntime-web") as err:
        ensure_ort_web(cache_dir=tmp_path / "cache", local=package)
    assert hashlib.sha256(b"// patched\n").hexdigest() in str(err.value)


def test_main_fills_the_cache_and_prints_the_folder(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPUXC_CACHE_DIR", str(tmp_path))
    assert ortweb.main([]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "npm" / f"onnxruntime-web-{ORT_WEB_VERSION}")
    offline(monkeypatch)
    monkeypatch.setenv("GPUXC_CACHE_DIR", str(tmp_path / "empty"))
    assert ortweb.main([]) == int(TargetUnavailable.exit_code)
    assert capsys.readouterr().err.startswith("error: cannot fetch onnxruntime-web")


@pytest.mark.network
def test_the_real_package_from_the_registry_matches_the_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ortweb.ORT_WEB_DIR_ENV, raising=False)
    got = ensure_ort_web(cache_dir=tmp_path)
    assert got.source == "registry" and got.files == ortweb.ORT_WEB_FILE_SHA256
    assert (got.folder / ortweb.ORT_WEB_ENTRY).stat().st_size > 10_000
    # the entry module asks for exactly the WASM pair vendored beside it
    entry = (got.folder / ortweb.ORT_WEB_ENTRY).read_text(encoding="utf-8")
    assert ORT_WEB_FILES[1] in entry


PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import * as ort from "./ort/%s";
// wasmPaths resolves against the ort module's own URL, not the page: give it absolute
ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
window.result = (async () => {
  const session = await ort.InferenceSession.create("../model.onnx", {executionProviders: ["wasm"]});
  const x = new ort.Tensor("float32", Float32Array.from([1, 2, 3]), [3]);
  const out = await session.run({x, y: x});
  return {z: Array.from(out.z.data), isolated: self.crossOriginIsolated, threads: ort.env.wasm.numThreads};
})().catch((e) => ({error: String(e)}));
</script>"""


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the headers WASM threads need (COOP/COEP) and the right MIME types."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm"}  # fmt: skip

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.network  # the real package: from the cache CI warms (.ci/run), else the registry
def test_the_vendored_files_run_a_model_in_headless_chromium_on_wasm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three files are all the page needs: the entry module finds its WASM pair under wasmPaths
    (no request 404s), with threads in a cross-origin-isolated page."""
    import functools
    import shutil

    import onnx
    from onnx import TensorProto, helper

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright drives the browser")
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if chromium is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    ort_web = ensure_ort_web()
    (tmp_path / "web" / "ort").mkdir(parents=True)
    for name in ORT_WEB_FILES:
        shutil.copyfile(ort_web.folder / name, tmp_path / "web" / "ort" / name)
    (tmp_path / "web" / "index.html").write_text(PAGE % ortweb.ORT_WEB_ENTRY, encoding="utf-8")
    vec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in "xyz"]
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add", vec[:2], vec[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)  # web 1.30: IR <= 13
    onnx.save(model, tmp_path / "model.onnx")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(IsolatedHandler, directory=tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page()
            missing: list[str] = []
            page.on("response", lambda r: missing.append(r.url) if r.status >= 400 else None)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/web/index.html")
            result = page.evaluate("window.result")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result.get("error") is None, result["error"]
    assert result["z"] == [2.0, 4.0, 6.0] and result["isolated"] is True and not missing
