"""``gpuxc bench``: latency, throughput and peak RSS of bundles, optionally against the raw model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gpuxc.cli.app import JsonOpt, VerboseOpt, app, err, handle_errors, require_bundle
from gpuxc.errors import ExitCode


@app.command()
@handle_errors
def bench(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle folder(s).")],
    compare: Annotated[
        Path | None, typer.Option("--compare", help="Also run this ONNX model in a default ONNX Runtime session.")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", min=1)] = 100,
    warmup: Annotated[int, typer.Option("--warmup", min=0)] = 10,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="ONNX Runtime intra-op threads.")] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="With --compare: turns each takes.")] = 3,
    profile: Annotated[
        bool, typer.Option("--profile", help="Also time per op type, from the runtime's profiler (not with --compare).")
    ] = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Latency p50/p90/p99, throughput and peak RSS of bundles (and of the raw model with --compare)."""
    from gpuxc.bundle import bench as benchmod

    for b in bundles:
        require_bundle(b)
    if compare is not None:
        if profile:  # the profiler's own cost would bias the comparison
            err("error: --profile measures bundles on their own; drop --compare")
            raise typer.Exit(int(ExitCode.USAGE))
        result = benchmod.compare_runs(compare, bundles, runs, warmup, threads, rounds)
        summary = result["results"]
    else:
        summary = {str(b): benchmod.bench_bundle(b, runs, warmup, threads, profile) for b in bundles}
        result = {"runs": runs, "results": summary}
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        for line in benchmod.table(summary):
            typer.echo(line)
        for name, stats in summary.items():
            if stats.get("profile"):
                typer.echo(f"\n{name}: time per op type ({stats.get('provider', '?')}, runtime profiler)")
                for line in benchmod.profile_lines(stats["profile"]):
                    typer.echo(line)
