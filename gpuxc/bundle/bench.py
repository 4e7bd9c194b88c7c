"""``gpuxc bench``: latency, throughput and peak memory of bundles, side by side with raw ONNX Runtime.

Every measurement runs in its own child process (the bundle's own runner, or
``python -m gpuxc.bundle.bench raw`` for the plain model) so that peak RSS belongs to
that model alone and one session's threads never compete with another's. With
``--compare``, the raw model and the bundles take turns for several rounds and
the median of each one's p50s is compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpuxc.bundle import layout
from gpuxc.bundle.manifest import read_manifest
from gpuxc.errors import BundleError, GpuxcError


def bench_bundle(bundle: Path, runs: int, warmup: int, threads: int | None, profile: bool = False) -> dict[str, Any]:
    read_manifest(bundle)  # a clear error for a non-bundle before any process starts
    cmd = [sys.executable, str(bundle), "bench", "--json", "--runs", str(runs), "--warmup", str(warmup)]
    if threads:
        cmd += ["--threads", str(threads)]
    if profile:
        cmd.append("--profile")
    return _child(cmd, f"bundle {bundle}")


def profile_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The runner's per-op-type table (the same module every bundle carries)."""
    from gpuxc.bundle.runner_source import runner_module

    return list(runner_module("profile").table_lines(rows))


def bench_raw(model: Path, inputs: Path, runs: int, warmup: int, threads: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gpuxc.bundle.bench", "raw", str(model), str(inputs), "--runs", str(runs),
           "--warmup", str(warmup)]  # fmt: skip
    if threads:
        cmd += ["--threads", str(threads)]
    return _child(cmd, f"model {model}")


def _child(cmd: list[str], what: str) -> dict[str, Any]:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BundleError(f"benchmark of {what} failed: {last}")
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        raise BundleError(f"benchmark of {what} printed no result") from None


def compare_runs(model: Path, bundles: list[Path], runs: int, warmup: int, threads: int | None,
                 rounds: int = 3) -> dict[str, Any]:  # fmt: skip
    """Raw model and bundles in turns; ratios are raw p50 / bundle p50 (above 1: the bundle is faster)."""
    if not bundles:
        raise BundleError("--compare needs at least one bundle")
    for b in bundles:
        read_manifest(b)
    inputs = bundles[0] / layout.REFERENCE_INPUTS
    rows: dict[str, list[dict[str, Any]]] = {"raw": [], **{str(b): [] for b in bundles}}
    for _ in range(rounds):
        rows["raw"].append(bench_raw(model, inputs, runs, warmup, threads))
        for b in bundles:
            rows[str(b)].append(bench_bundle(b, runs, warmup, threads))
    summary = {name: _merge(results) for name, results in rows.items()}
    raw_p50 = summary["raw"]["p50_time_ms"]
    for stats in summary.values():
        stats["speedup_vs_raw"] = raw_p50 / stats["p50_time_ms"] if stats["p50_time_ms"] else None
    return {"model": str(model), "rounds": rounds, "runs": runs, "results": summary}


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each latency figure; the largest peak RSS."""
    out: dict[str, Any] = {}
    for key in ("p50_time_ms", "p90_time_ms", "p99_time_ms", "avg_time_ms", "fps"):
        out[key] = statistics.median(r[key] for r in results)
    rss: list[float] = [r["peak_rss_mb"] for r in results if r.get("peak_rss_mb") is not None]
    out["peak_rss_mb"] = max(rss) if rss else None
    out["provider"] = results[0].get("provider")
    return out


def table(summary: dict[str, Any]) -> list[str]:
    lines = [f"{'what':<48} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'inf/s':>9} {'RSS MiB':>8} {'vs raw':>7}"]
    for name, s in summary.items():
        ratio = f"{s['speedup_vs_raw']:.2f}x" if s.get("speedup_vs_raw") else "-"
        rss = f"{s['peak_rss_mb']:.0f}" if s.get("peak_rss_mb") else "-"
        label = name if len(name) <= 48 else "..." + name[-45:]
        lines.append(f"{label:<48} {s['p50_time_ms']:>9.3f} {s['p90_time_ms']:>9.3f} {s['p99_time_ms']:>9.3f} "
                     f"{s['fps']:>9.1f} {rss:>8} {ratio:>7}")  # fmt: skip
    return lines


def _raw_main(argv: list[str]) -> int:
    """Child process: the plain model in a default ONNX Runtime session."""
    parser = argparse.ArgumentParser(prog="python -m gpuxc.bundle.bench raw")
    parser.add_argument("model")
    parser.add_argument("inputs")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    import numpy as np
    import onnxruntime as ort

    from gpuxc.bundle.compare import latency_stats, peak_rss_mb

    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    with np.load(args.inputs, allow_pickle=False) as data:
        feeds = {k: data[k] for k in data.files}
    for _ in range(args.warmup):
        session.run(None, feeds)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    stats: dict[str, Any] = dict(latency_stats(times))
    stats["peak_rss_mb"] = peak_rss_mb()
    stats["provider"] = "onnxruntime default session (CPUExecutionProvider)"
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "raw":
        try:
            raise SystemExit(_raw_main(sys.argv[2:]))
        except GpuxcError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(int(exc.exit_code)) from None
    usage = "usage: python -m gpuxc.bundle.bench raw MODEL INPUTS.npz [--runs N] [--warmup N] [--threads N]"
    print(usage, file=sys.stderr)
    raise SystemExit(2)
