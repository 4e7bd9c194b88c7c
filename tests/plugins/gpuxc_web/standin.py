"""A hand-made web bundle for the adapter's tests and benchmarks/web.py, until ``gpuxc compile -t web`` exists.

A cpu bundle (its model, reference files, runner) turned into the web bundle layout of
docs/targets/web.md: ``runner/runtime.py`` from templates/web/runtime.py, ONNX Runtime Web's files
under ``web/ort/`` from the unpacked npm package, and a *stand-in* page (``web/index.html`` +
``web/driver.mjs``) that implements only the driver hook (``window.gpuxcDriver``) the adapter drives.
The bundle's real page is another part of issue 15; this one exists so the adapter can be tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# The files a web bundle vendors (gpuxc_web.ortweb), from $GPUXC_ORT_WEB_DIR (CI fills it) or the unpacked package.
ORT_WEB_DIST = Path(os.environ.get("GPUXC_ORT_WEB_DIR") or "/tmp/ortweb/package/dist")
ORT_FILES = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")

INDEX_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>gpuxc web bundle (test stand-in)</title>
<script type="module" src="./driver.mjs"></script></head><body></body></html>
"""

# The driver hook only: feeds arrive as {name: {dtype, shape, b64}}, outputs leave the same way.
DRIVER_MJS = r"""import * as ort from "./ort/ort.webgpu.min.mjs";

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
const TYPED = {float32: Float32Array, float64: Float64Array, float16: Uint16Array, int8: Int8Array,
  int16: Int16Array, int32: Int32Array, int64: BigInt64Array, uint8: Uint8Array, uint16: Uint16Array,
  uint32: Uint32Array, uint64: BigUint64Array, bool: Uint8Array};
let session;

function fromBase64(b64) {
  const text = atob(b64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

async function load() {
  const backend = new URLSearchParams(location.search).get("backend") || "wasm";
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(navigator.hardwareConcurrency || 1, 4) : 1;
  session = await ort.InferenceSession.create("../model/model.onnx", {executionProviders: [backend]});
  return {backend, fallback_reason: null, threads: ort.env.wasm.numThreads,
          cross_origin_isolated: self.crossOriginIsolated, ort_version: ort.env.versions.web};
}

async function run(encoded) {
  const feeds = {};
  for (const [name, t] of Object.entries(encoded)) {
    const bytes = fromBase64(t.b64);
    const Typed = TYPED[t.dtype];
    const data = new Typed(bytes.buffer, 0, bytes.byteLength / Typed.BYTES_PER_ELEMENT);
    feeds[name] = new ort.Tensor(t.dtype, data, t.shape);
  }
  const results = await session.run(feeds);
  const out = {};
  for (const [name, t] of Object.entries(results)) {
    const d = t.data;
    out[name] = {dtype: t.type, shape: Array.from(t.dims, Number),
                 b64: toBase64(new Uint8Array(d.buffer, d.byteOffset, d.byteLength))};
  }
  return out;
}

const ready = load();
window.gpuxcDriver = {ready, run, error: null};
ready.catch((e) => { window.gpuxcDriver.error = String(e && e.message || e); });
"""


def have_ort_web() -> bool:
    return all((ORT_WEB_DIST / name).is_file() for name in ORT_FILES)


def web_bundle(cpu_bundle: Path, dest: Path) -> Path:
    """``cpu_bundle`` copied to ``dest`` as a web bundle (stand-in page), its manifest's files list redone."""
    shutil.copytree(cpu_bundle, dest)
    shutil.copyfile(ROOT / "templates" / "web" / "runtime.py", dest / "runner" / "runtime.py")
    (dest / "web" / "ort").mkdir(parents=True)
    for name in ORT_FILES:
        shutil.copyfile(ORT_WEB_DIST / name, dest / "web" / "ort" / name)
    (dest / "web" / "index.html").write_text(INDEX_HTML, encoding="utf-8")
    (dest / "web" / "driver.mjs").write_text(DRIVER_MJS, encoding="utf-8")
    manifest_path = dest / "gpux-bundle.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["target"] = "web"
    manifest["artifact"]["format"] = "web"
    manifest["artifact"]["settings"] = {}
    manifest["runtime"]["adapter"] = "web/runtime.py"
    manifest["runtime"]["providers"] = ["wasm"]
    files = sorted(p for p in dest.rglob("*") if p.is_file() and p != manifest_path and "__pycache__" not in p.parts)
    manifest["files"] = [{"path": p.relative_to(dest).as_posix(), "size": p.stat().st_size,
                          "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]  # fmt: skip
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return dest
