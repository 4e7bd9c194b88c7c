"""``gpuxc init``: a gpux.yml written from a model's signature (and a preprocessing block for image and text models)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpuxc.cli.app import VerboseOpt, app, err, handle_errors


@app.command()
@handle_errors
def init(
    model: Annotated[Path, typer.Argument(help="The ONNX model to describe.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write (default: gpux.yml beside the model).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Project name (default: from the file name).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing gpux.yml.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write a gpux.yml from a model's signature (with a preprocessing block for image and text models)."""
    from gpuxc.project.scaffold import write_config

    path, note = write_config(model, out, name, force)
    err(f"wrote {path}" + (f" ({note})" if note else ""))
