"""Browser WASM latency beside native ONNX Runtime: real models in headless Chromium (target web).

    python benchmarks/web.py            # writes the "Browser (web target)" section of docs/benchmarks.md
    python benchmarks/web.py --models ppocr-cls --rounds 3 --no-doc

Each model is compiled for the web target (``gpuxc compile -t web``: the model optimised at BASIC,
ONNX Runtime Web vendored, the page) and run through the bundle's own Adapter: ONNX Runtime Web on
the WASM backend in the system Chromium, threads as the page picks them (cross-origin isolated:
min(cores, 4)). Native is ONNX Runtime's CPU provider in this process on the same model file and the
same reference inputs, default threads and optimisation. ONNX Runtime Web comes from
$GPUXC_ORT_WEB_DIR, gpuxc's cache, or the registry once. Interleaved
rounds (adapter, in page, native, adapter, ...), each the median of its calls; the table shows the
median of the round medians. "Via Adapter" includes the DevTools round trip per call (feeds and
outputs crossing as base64), which a page calling ``infer`` does not pay; "in page" is timed by the
page itself around the driver's run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import doc_section  # noqa: E402
from run import machine_facts  # noqa: E402

from fixtures.real_models import CATALOG, fetch  # noqa: E402
from gpuxc.build.pipeline import compile_project  # noqa: E402
from gpuxc.targets.timing import adapter_module  # noqa: E402

START = "<!-- web.py: start -->"
END = "<!-- web.py: end -->"
# model -> build.shapes (the browser runs the shapes the bundle was verified at)
MODELS: dict[str, dict[str, list[int]]] = {
    "ppocr-cls": {"x": [1, 3, 48, 192]},
    "magika": {"bytes": [1, 2048]},
    "silero-vad": {"input": [1, 512], "state": [2, 1, 128]},
    "minilm": {"input_ids": [1, 128], "attention_mask": [1, 128], "token_type_ids": [1, 128]},
}


def build(name: str, work: Path) -> Path:
    """The web bundle of ``name``, as ``gpuxc compile -t web`` builds it (verified in Chromium)."""
    folder = work / name
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(fetch(CATALOG[name]).read_bytes())
    config: dict[str, Any] = {"name": name, "version": "1", "model": {"source": "./model.onnx"},
                              "build": {"shapes": MODELS[name]}}  # fmt: skip
    (folder / "gpux.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    [result] = compile_project(folder, ["web"], work / "dist", use_cache=False)
    return result.path


def _median_ms(call: Callable[[], Any], seconds: float, min_calls: int = 3) -> float:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def measure(bundle: Path, rounds: int, seconds: float) -> dict[str, Any]:
    import onnxruntime as ort

    web = adapter_module("web/runtime.py")
    model = bundle / "model" / "model.onnx"
    with np.load(bundle / "reference" / "inputs.npz", allow_pickle=False) as data:
        feeds = {k: data[k] for k in data.files}
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    adapter = web.Adapter(model, {}, "wasm", ["wasm"], strict=True)
    try:
        info = adapter.provider_info()
        browser = adapter.run(feeds, names, 600.0)  # warm-up, and the agreement check below
        native = dict(zip(names, session.run(names, feeds), strict=True))
        medians: dict[str, list[float]] = {"web": [], "page": [], "native": []}
        for _ in range(rounds):
            medians["web"].append(_median_ms(lambda: adapter.run(feeds, names, 600.0), seconds))
            runs = max(3, int(seconds * 1000 / max(medians["web"][-1], 0.01)))
            medians["page"].append(statistics.median(adapter.time_in_page(feeds, runs, 600.0)))
            medians["native"].append(_median_ms(lambda: session.run(names, feeds), seconds))
    finally:
        adapter.close()
    worst = max(float(np.max(np.abs(browser[n].astype(np.float64) - native[n].astype(np.float64))))
                for n in names if native[n].size)  # fmt: skip
    web_ms, native_ms = statistics.median(medians["web"]), statistics.median(medians["native"])
    page_ms = statistics.median(medians["page"])
    return {"web_ms": web_ms, "page_ms": page_ms, "native_ms": native_ms, "ratio": page_ms / native_ms,
            "max_abs": worst,
            "threads": info["threads"], "runtime": info["runtime"]}  # fmt: skip


def render(rows: list[dict[str, Any]], facts: dict[str, str], rounds: int) -> str:
    runtime = rows[0]["runtime"] if rows else "?"
    lines = [
        START,
        "## Browser (web target): WASM in headless Chromium beside native ONNX Runtime",
        "",
        "Written by `python benchmarks/web.py`. The same optimised model and reference inputs, run by the web",
        "bundle's Adapter (ONNX Runtime Web, WASM backend, SIMD + threads in a cross-origin isolated page) and by",
        f"ONNX Runtime's CPU provider in Python; interleaved rounds ({rounds}), medians, ms per call. The browser",
        "figure is timed twice: in the page (`performance.now()` around the driver's run, which still decodes",
        "and encodes base64) and from Python through the Adapter (adding the DevTools round trip each call).",
        "The ratio is in-page over native. `max abs` is the largest difference between the two outputs.",
        "On a host shared with other work the browser figures move by 2x between runs (earlier runs here:",
        "ppocr-cls 13-34 ms in page): compare ratios from one run, not absolute figures across runs.",
        "",
        f"Browser: {runtime}. Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".",
        "",
        "| model | WASM in page ms | WASM via Adapter ms | native ORT ms | ratio | WASM threads | max abs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['page_ms']:.2f} | {r['web_ms']:.2f} | {r['native_ms']:.2f} | "
                     f"{r['ratio']:.1f}x | {r['threads']} | {r['max_abs']:.1e} |")  # fmt: skip
    lines += ["", END]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per side and round")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpuxc-web-bench-") as tmp:
        for name in args.models.split(","):
            row = {"model": name, **measure(build(name, Path(tmp)), args.rounds, args.seconds)}
            print(f"{name:<11} page {row['page_ms']:8.2f} ms  adapter {row['web_ms']:8.2f} ms  "
                  f"native {row['native_ms']:8.2f} ms  {row['ratio']:.1f}x",
                  file=sys.stderr)  # fmt: skip
            rows.append(row)
    text = render(rows, {**machine_facts(), "cores": str(os.cpu_count())}, args.rounds)
    print(text)
    if not args.no_doc:
        doc_section.replace_section(args.out, text, START, END)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
