"""A screenshot of a web bundle's page in headless Chromium (the one docs/targets/web.md shows).

    python benchmarks/web_screenshot.py BUNDLE [OUT.png [IMAGE]]

Serves BUNDLE (a compiled ``web`` bundle) on loopback with the COOP/COEP headers threads need, opens
``web/index.html`` (backend auto: WASM where headless Chromium has no GPU adapter), waits for the
verification and latency to be shown, runs IMAGE through the page's own-input form when given (a
bundle with image preprocessing) and saves a PNG (default docs/images/web-page.png). The docs' image:

    python examples/text-orientation/prepare.py
    gpuxc compile examples/text-orientation -t web -o dist
    python benchmarks/web_screenshot.py dist/text-orientation-1.0.0-web docs/images/web-page.png \
        examples/text-orientation/upright.jpg
 Needs Chromium ($GPUXC_CHROMIUM, else
/usr/bin/chromium) and Playwright. Exits 1 when the page does not report "passed".
"""

from __future__ import annotations

import functools
import http.server
import os
import sys
import threading
from pathlib import Path
from typing import Any

WIDTH = 960


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}  # fmt: skip

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


def screenshot(bundle: Path, out: Path, image: Path | None = None) -> tuple[str, str | None]:
    """Save the page of ``bundle`` to ``out``; return the page's status (passed, failed or error) and
    its median latency in ms (None unless the reference ran)."""
    from playwright.sync_api import sync_playwright

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(bundle)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=os.environ.get("GPUXC_CHROMIUM", "/usr/bin/chromium"), headless=True
            )
            page = browser.new_page(viewport={"width": WIDTH, "height": 700})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/web/index.html")
            page.wait_for_function("() => document.body.dataset.status !== 'loading'", timeout=600_000)
            if image is not None and page.is_visible("#image-file"):
                page.set_input_files("#image-file", str(image))
                page.wait_for_function("() => !/^(|Running…)$/.test(document.getElementById('own-result').textContent)")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            status = str(page.locator("body").get_attribute("data-status"))
            latency = page.locator("body").get_attribute("data-latency-ms")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return status, latency


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(argv[1] if len(argv) > 1 else "docs/images/web-page.png")
    status, latency = screenshot(Path(argv[0]), out, Path(argv[2]) if len(argv) > 2 else None)
    print(f"{out}: page status {status}, latency median {latency} ms", file=sys.stderr)
    return 0 if status == "passed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
