"""ONNX Runtime Web adapter of this bundle: the model runs in headless Chromium, as a browser runs it.

The bundle's own page (``web/index.html?driver=1``) is served from a loopback HTTP server over the
bundle folder, with the COOP/COEP headers WASM threads need, and opened in Chromium through
Playwright; ``run`` hands the feeds to the page's ``window.gpuxcDriver.run`` as base64 of
little-endian bytes and turns its answer back into NumPy arrays. Chromium is $GPUXC_CHROMIUM, else the
first of /usr/bin/chromium, chromium-browser, google-chrome found. Playwright's own browser download
is never used: the system Chromium is driven through ``executable_path``.

Playwright runs on its own asyncio loop in one daemon thread, so the adapter can be called from any
thread (and from code already inside an event loop), and a run past its timeout can be abandoned:
its page is closed (which kills a renderer stuck in WebAssembly) and the next run opens a fresh one.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import mimetypes
import os
import shutil
import sys
import threading
import urllib.parse
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np

CHROMIUM_ENV = "GPUXC_CHROMIUM"
CHROMIUM_NAMES = ("/usr/bin/chromium", "chromium-browser", "google-chrome")
PAGE = "web/index.html"
BACKENDS = ("wasm", "webgpu")
# Names that mean "no particular backend": WASM, the backend that runs everywhere (and verifies).
AUTO_NAMES = ("", "auto", "browser", "web")
# Headers every response carries: COOP + COEP make the page cross-origin isolated, which is what lets
# ONNX Runtime Web use SharedArrayBuffer (WASM threads).
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
                 ".html": "text/html; charset=utf-8", ".json": "application/json", ".css": "text/css",
                 ".onnx": "application/octet-stream", ".ort": "application/octet-stream",
                 ".npz": "application/octet-stream"}  # fmt: skip
# The page has this long to load ONNX Runtime Web and create its session (big models, slow disks).
LOAD_TIMEOUT_S = 300.0
# Beyond a run's own timeout: how long the Python side waits for the page's answer to arrive.
_GRACE_S = 2.0
# How long closing a browser may take before it is left to die with this process.
_CLOSE_S = 15.0
# The driver's run, bounded on the page too (settles even when the run itself never does).
_RUN_JS = """async ([encoded, ms]) => {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error("gpuxc-timeout")), ms);
  });
  try { return await Promise.race([window.gpuxcDriver.run(encoded), expired]); }
  finally { clearTimeout(timer); }
}"""
# Runs timed inside the page: the driver's own cost (base64 in and out) without the DevTools round trip.
_TIME_JS = """async ([encoded, runs]) => {
  const times = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await window.gpuxcDriver.run(encoded);
    times.push(performance.now() - start);
  }
  return times;
}"""
_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16",
           "uint8", "bool")  # fmt: skip


class InferenceTimeout(TimeoutError):
    """A run took longer than runtime.timeout; its page was closed (the next run opens a new one)."""


class BrowserError(RuntimeError):
    """Chromium is missing, or the page could not load or run the model (one line, ORT's wording kept)."""


def find_chromium() -> str:
    """The Chromium executable to drive: $GPUXC_CHROMIUM, else the first one installed."""
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        found = shutil.which(named)
        if found is None:
            raise BrowserError(f"${CHROMIUM_ENV}={named}: no such executable")
        return found
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise BrowserError("no Chromium found (looked for " + ", ".join(CHROMIUM_NAMES) + f"); install it "
                       f"(Debian: apt-get install chromium) or set ${CHROMIUM_ENV}")  # fmt: skip


def encode(array: np.ndarray) -> dict[str, Any]:
    """One feed as the driver takes it: dtype name, shape, base64 of its little-endian bytes."""
    value = np.asarray(array)
    if value.dtype.name not in _DTYPES:
        raise ValueError(f"dtype {value.dtype} cannot be passed to the browser (one of: {', '.join(_DTYPES)})")
    little = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
    return {"dtype": value.dtype.name, "shape": list(value.shape), "b64": base64.b64encode(little.tobytes()).decode()}


def decode(encoded: dict[str, Any]) -> np.ndarray:
    """The driver's answer for one output back into an array (native byte order)."""
    name = str(encoded.get("dtype"))
    if name not in _DTYPES:
        raise BrowserError(f"the page answered an output of dtype '{name}', which has no NumPy equivalent here")
    dtype = np.dtype(name)
    flat = np.frombuffer(base64.b64decode(encoded["b64"]), dtype=dtype.newbyteorder("<"))
    return flat.astype(dtype).reshape([int(d) for d in encoded["shape"]])


class _BundleFiles(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of files under one folder; no listings, nothing outside it (``..``, symlinks out), no dot-files."""

    root: Path  # set on the per-server subclass
    server_version = "gpuxc-web"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self._resolve(urllib.parse.urlsplit(self.path).path)
        if path is None:
            self.send_error(404, "not found")
            return
        with path.open("rb") as fh:
            self.send_response(200)
            content_type = CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
            self.send_header("Content-Type", content_type or "application/octet-stream")
            self.send_header("Content-Length", str(os.fstat(fh.fileno()).st_size))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                shutil.copyfileobj(fh, self.wfile, 1 << 20)  # streamed: a model may be gigabytes

    def end_headers(self) -> None:
        for key, value in ISOLATION_HEADERS.items():  # on errors too: the page's fetches stay same-policy
            self.send_header(key, value)
        super().end_headers()

    def _resolve(self, url_path: str) -> Path | None:
        if url_path in ("", "/"):
            url_path = "/" + PAGE
        parts = urllib.parse.unquote(url_path).split("/")
        # Dot-files (.env, .git) are never part of what a bundle serves, even when a deployment adds them.
        if any(p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            return None
        candidate = (self.root / "/".join(p for p in parts if p)).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: the page's fetches are not the user's concern


class StaticServer:
    """A loopback (by default) HTTP server over ``root`` in a daemon thread; ``url`` is its base."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("BundleFiles", (_BundleFiles,), {"root": Path(root).resolve()})
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="gpuxc-web-files", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_page(bundle_dir: Path, host: str, port: int) -> None:
    """``python <bundle> serve`` for a web bundle: the page and the files it fetches, until interrupted.
    The page's URL goes to stdout (what a script reads), the rest to stderr."""
    server = StaticServer(bundle_dir, host, port)
    print(f"{server.url}{PAGE}", flush=True)
    print(f"serving the bundle's page on {server.url} (cross-origin isolated: WASM threads); Ctrl-C stops",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def page_backend(preferred: str, strict: bool) -> str:
    """The backend the page is asked for: --provider/$GPUXC_PROVIDER/gpux.yml's, WASM by default."""
    wanted = (preferred or "").strip().lower()
    if wanted in BACKENDS:
        return wanted
    if wanted not in AUTO_NAMES and strict:
        raise ValueError(f"backend '{preferred}' is not one ONNX Runtime Web has here (one of: {', '.join(BACKENDS)})")
    return "wasm"


class Adapter:
    def __init__(self, model_path: Path, settings: dict[str, Any], preferred: str, verified_providers: list[str],
                 strict: bool = True) -> None:
        self.settings = settings
        self.verified_providers = verified_providers
        self.backend = page_backend(preferred, strict)
        self.bundle_dir = Path(model_path).resolve().parent.parent
        if not (self.bundle_dir / PAGE).is_file():
            raise BrowserError(f"{self.bundle_dir / PAGE}: the bundle has no page")
        self.executable = find_chromium()
        self.info: dict[str, Any] = {}
        self.browser_version = ""
        self._page: Any = None
        self._browser: Any = None
        self._playwright: Any = None
        self.server = StaticServer(self.bundle_dir)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gpuxc-web-browser", daemon=True)
        self._thread.start()
        try:
            self._call(self._start(), LOAD_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    # -- on the loop -------------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            from playwright.async_api import async_playwright
        except ImportError:
            raise BrowserError("running a web bundle needs playwright (pip install playwright); its browser "
                               "download is not needed") from None  # fmt: skip
        self._playwright = await async_playwright().start()
        await self._ensure_page()

    async def _launch(self) -> None:
        args = ["--enable-unsafe-webgpu"] if self.backend == "webgpu" else []
        try:
            self._browser = await self._playwright.chromium.launch(executable_path=self.executable, headless=True,
                                                                   args=args)  # fmt: skip
        except Exception as exc:
            raise BrowserError(f"{self.executable} did not start: {_first_line(exc)}") from None
        self.browser_version = self._browser.version

    async def _ensure_page(self) -> Any:
        """The page with the model loaded: launched again after a timeout closed the browser."""
        if self._browser is None:
            await self._launch()
        if self._page is None:
            self._page = await self._open_page()
        return self._page

    async def _open_page(self) -> Any:
        page = await self._browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(_first_line(exc)))
        page.on("response", lambda r: errors.append(f"{r.url}: HTTP {r.status}") if _failed_fetch(r) else None)
        url = f"{self.server.url}{PAGE}?driver=1&backend={self.backend}"
        try:
            await page.goto(url)
            # A module that failed to load (a file missing from web/) never sets the hook: say so now
            # rather than wait out the load timeout.
            if errors and not await page.evaluate("() => window.gpuxcDriver !== undefined"):
                raise BrowserError(errors[0])
            # The page sets window.gpuxcDriver as soon as its module runs; ready settles once the model is loaded.
            await page.wait_for_function("() => window.gpuxcDriver !== undefined", timeout=LOAD_TIMEOUT_S * 1000)
            self.info = dict(await page.evaluate("() => window.gpuxcDriver.ready"))
        except Exception as exc:
            await page.close()
            reason = _first_line(exc)
            if "Timeout" in type(exc).__name__ and errors:
                reason = errors[0]  # the page's own error says more than playwright's wait
            raise BrowserError(f"the bundle's page could not load the model: {reason}") from None
        return page

    async def _run(self, encoded: dict[str, Any], timeout: float) -> dict[str, Any]:
        page = await self._ensure_page()
        try:
            result: dict[str, Any] = await asyncio.wait_for(page.evaluate(_RUN_JS, [encoded, timeout * 1000]),
                                                            timeout + _GRACE_S)  # fmt: skip
            return result
        except (asyncio.TimeoutError, Exception) as exc:
            if isinstance(exc, asyncio.TimeoutError) or "gpuxc-timeout" in str(exc):
                # A renderer busy in WebAssembly does not even let its page close (measured): the browser
                # process goes, and with it the renderer; the next run launches a new one.
                browser, self._browser, self._page = self._browser, None, None
                try:
                    await asyncio.wait_for(browser.close(), _CLOSE_S)
                except Exception:
                    pass  # the browser's own process is gone or going; a new one is launched next time
                raise InferenceTimeout(f"inference exceeded the {timeout:g}s timeout") from None
            if "crashed" in str(exc) or page.is_closed():
                self._page = None  # a renderer that died (out of memory): the next run loads the page again
                await page.close()
            raise BrowserError(f"the browser could not run the model: {_first_line(exc)}") from None

    async def _stop(self) -> None:
        for closable in (self._page, self._browser):
            if closable is not None:
                try:
                    await closable.close()
                except Exception:
                    pass  # already gone (a crashed browser): nothing left to close
        if self._playwright is not None:
            await self._playwright.stop()
        self._page = self._browser = self._playwright = None

    def _call(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout + _GRACE_S + _CLOSE_S + 5.0)  # a backstop: _run stops itself
        except TimeoutError:  # concurrent.futures' and asyncio's are this one too
            if future.done():
                raise  # the run's own InferenceTimeout
            future.cancel()
            raise InferenceTimeout(f"the browser did not answer within {timeout:g}s") from None

    # -- the adapter API ---------------------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], timeout: float) -> dict[str, np.ndarray]:
        encoded = {name: encode(value) for name, value in feeds.items()}
        answer = self._call(self._run(encoded, timeout), timeout)
        missing = [name for name in output_names if name not in answer]
        if missing:
            raise BrowserError(f"the page returned no output named {', '.join(missing)}")
        return {name: decode(answer[name]) for name in output_names}

    def time_in_page(self, feeds: dict[str, np.ndarray], runs: int, timeout: float) -> list[float]:
        """Milliseconds of each of ``runs`` driver runs, timed by the page itself (``performance.now``):
        what ``run`` costs without the DevTools round trip (benchmarks/web.py shows both)."""
        encoded = {name: encode(value) for name, value in feeds.items()}
        times = self._call(self._evaluate(_TIME_JS, [encoded, runs], timeout), timeout)
        return [float(t) for t in times]

    async def _evaluate(self, script: str, arg: Any, timeout: float) -> Any:
        page = await self._ensure_page()
        return await asyncio.wait_for(page.evaluate(script, arg), timeout)

    def provider_info(self) -> dict[str, Any]:
        backend = str(self.info.get("backend") or self.backend)
        ort_version = self.info.get("ort_version") or "?"
        return {
            "name": "browser",
            "available": True,
            "providers": [backend],
            "verified_at_build": backend in self.verified_providers or backend == "wasm",
            "runtime": f"Chromium {self.browser_version} onnxruntime-web {ort_version} {backend}",
            "backend": backend,
            "fallback_reason": self.info.get("fallback_reason"),
            "threads": self.info.get("threads"),
            "cross_origin_isolated": self.info.get("cross_origin_isolated"),
            "options": {"backend": self.backend, "executable": self.executable},
        }

    def available_providers(self) -> list[str]:
        return list(BACKENDS)

    def close(self) -> None:
        """Close the page, the browser, Playwright and the file server (again: nothing to do)."""
        if self._loop.is_closed():
            return
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
            except Exception:
                pass  # closing must not fail: the browser dies with this process anyway
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()
        self.server.close()


def _failed_fetch(response: Any) -> bool:
    """A file the page needed and did not get (not the favicon a browser asks for on its own)."""
    return bool(response.status >= 400 and not response.url.endswith("/favicon.ico"))


def _first_line(exc: BaseException) -> str:
    """An exception's message as one line: playwright's carry the JS stack and a call log below it."""
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line.removeprefix("Error: ").removeprefix("Page.evaluate: ").removeprefix("Error: ")
