"""``gpuxc export ray|triton|kserve BUNDLE``: the bundle handed to an existing serving engine (docs/deploy.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gpuxc.cli.app import BundleArg, JsonOpt, VerboseOpt, app, handle_errors

export_app = typer.Typer(help="Hand a bundle to a serving engine: Ray Serve, a Triton model repository, KServe.",
                         no_args_is_help=True)  # fmt: skip
app.add_typer(export_app, name="export")

OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: <bundle>-<engine>).")]


def _report(result: object, json_out: bool) -> None:
    from gpuxc.export import ExportResult

    assert isinstance(result, ExportResult)
    if json_out:
        typer.echo(json.dumps(result.to_json()))
        return
    for note in result.notes:
        print(note, file=sys.stderr)
    print(f"{result.engine}: {result.path} ({len(result.files)} files)", file=sys.stderr)


def _default_out(bundle: Path, engine: str) -> Path:
    return bundle.resolve().parent / f"{bundle.resolve().name}-{engine}"


@export_app.command("triton")
@handle_errors
def export_triton(bundle: BundleArg, out: OutOpt = None, json_out: JsonOpt = False,
                  verbose: VerboseOpt = False) -> None:  # fmt: skip
    """A Triton model repository: REPO/<name>/config.pbtxt and REPO/<name>/1/<artifact>."""
    from gpuxc.export import open_bundle, triton

    manifest = open_bundle(bundle)
    _report(triton.export(bundle, out or _default_out(bundle, "triton"), manifest), json_out)


@export_app.command("kserve")
@handle_errors
def export_kserve(
    bundle: BundleArg, out: OutOpt = None,
    image: Annotated[str | None, typer.Option(help="Predictor image (default: <name>-<target>:<version>, "
                                                   "built from the bundle's Dockerfile).")] = None,
    triton: Annotated[str | None, typer.Option(metavar="STORAGE_URI", help="Serve with KServe's Triton runtime "
                                               "from this copy of `gpuxc export triton`'s repository.")] = None,
    min_replicas: Annotated[int, typer.Option(min=0, help="Replicas kept running (0: scale to zero).")] = 1,
    max_replicas: Annotated[int, typer.Option(min=1, help="Most replicas the autoscaler starts.")] = 4,
    json_out: JsonOpt = False, verbose: VerboseOpt = False,
) -> None:  # fmt: skip
    """A KServe InferenceService (v2 protocol) for the bundle's container image or a Triton repository."""
    from gpuxc.export import kserve, open_bundle

    manifest = open_bundle(bundle)
    result = kserve.export(bundle, out or _default_out(bundle, "kserve"), manifest, image=image, triton=triton,
                           min_replicas=min_replicas, max_replicas=max_replicas)  # fmt: skip
    _report(result, json_out)


@export_app.command("ray")
@handle_errors
def export_ray(bundle: BundleArg, out: OutOpt = None, json_out: JsonOpt = False, verbose: VerboseOpt = False,
               replicas: Annotated[int | None, typer.Option(
                   "--replicas", help="Fixed replica count (default: from serving.max_workers).")] = None,
               deploy: Annotated[bool, typer.Option(
                   "--deploy", help="Also run it on the Ray cluster at --address (serve.run).")] = False,
               address: Annotated[str, typer.Option(
                   "--address", help="Ray cluster for --deploy: HOST:PORT, ray://HOST:PORT or auto.")] = "auto",
               ) -> None:  # fmt: skip
    """A Ray Serve application running the bundle's runner as a deployment (app.py, serve.yaml, bundle/)."""
    from gpuxc.export import open_bundle, ray

    manifest = open_bundle(bundle)
    _report(ray.export(bundle, out or _default_out(bundle, "ray"), manifest, replicas=replicas,
                       address=address if deploy else None), json_out)  # fmt: skip
