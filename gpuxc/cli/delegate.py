"""``gpuxc run | serve BUNDLE [ARGS...]``: handed to the bundle's own runner, ``python BUNDLE run|serve``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import typer

from gpuxc.cli.app import BundleArg, VerboseOpt, app, handle_errors, require_bundle


def _delegate(command: str) -> Callable[..., None]:
    def run_bundle(ctx: typer.Context, bundle: BundleArg, verbose: VerboseOpt = False) -> None:
        require_bundle(bundle)
        raise typer.Exit(subprocess.call([sys.executable, str(bundle), command, *ctx.args]))

    run_bundle.__doc__ = f"Delegate to the bundle's own runner: python BUNDLE {command} [ARGS...]"
    return run_bundle


for _name in ("run", "serve"):
    app.command(_name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        handle_errors(_delegate(_name))
    )
