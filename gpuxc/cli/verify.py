"""``gpuxc verify``: a bundle against its reference outputs, ``--against`` a model, or ``--integrity`` of its files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from gpuxc.cli.app import BundleArg, JsonOpt, VerboseOpt, app, handle_errors, require_bundle
from gpuxc.errors import BundleError


@app.command()
@handle_errors
def verify(
    bundle: BundleArg,
    against: Annotated[
        Path | None, typer.Option("--against", help="Compare with this ONNX model instead of the reference outputs.")
    ] = None,
    inputs: Annotated[
        Path | None, typer.Option("--inputs", help="With --against: .npz of inputs (optional leading sample axis).")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="With --against: fresh generated samples.")] = 4,
    integrity: Annotated[
        bool, typer.Option("--integrity", help="Only check every file against the manifest's sha256 (no inference).")
    ] = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Verify a bundle: its reference outputs (bundle runner), or --against a model on fresh inputs."""
    require_bundle(bundle)
    if integrity:
        _verify_integrity(bundle, json_out)
        return
    if against is None:
        if inputs is not None:
            raise BundleError("--inputs needs --against MODEL.onnx")
        cmd = [sys.executable, str(bundle), "verify"] + (["--json"] if json_out else [])
        raise typer.Exit(subprocess.call(cmd))
    _verify_against(bundle, against, inputs, samples, json_out)


def _verify_integrity(bundle: Path, json_out: bool) -> None:
    from gpuxc.bundle.files import differences_from_manifest
    from gpuxc.bundle.manifest import read_manifest

    problems = differences_from_manifest(bundle, read_manifest(bundle))
    if json_out:
        typer.echo(json.dumps({"bundle": str(bundle), "intact": not problems, "problems": problems}))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BundleError(f"{bundle}: integrity check failed: {problems[0]}{more}")
    if not json_out:
        typer.echo(f"{bundle}: intact ({len(read_manifest(bundle).files)} files match the manifest)")


def _verify_against(bundle: Path, against: Path, inputs: Path | None, samples: int, json_out: bool) -> None:
    from gpuxc.build.report import metrics_table
    from gpuxc.bundle.against import verify_against
    from gpuxc.errors import VerificationFailed

    report = verify_against(bundle, against, inputs, samples)
    if json_out:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        typer.echo(f"{report['target']} bundle vs {against.name} on {report['samples']} sample(s) ({report['inputs']})")
        for line in metrics_table(report["outputs"], name_width=24):
            typer.echo(line)
        typer.echo(f"verification {report['status']}")
    if report["status"] != "passed":
        raise VerificationFailed(f"bundle differs from {against.name} beyond tolerance: {report['failures'][0]}")
