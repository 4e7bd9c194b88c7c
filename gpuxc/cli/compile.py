"""``gpuxc compile`` (and its hidden alias ``build``): a project into one verified bundle per target."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from gpuxc.cli.app import CacheDirOpt, JsonOpt, VerboseOpt, app, err, handle_errors
from gpuxc.errors import ExitCode


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8_dynamic = "int8-dynamic"
    int8_static = "int8-static"
    int4_weights = "int4-weights"
    auto = "auto"


class Optimize(str, Enum):
    fixed = "fixed"
    auto = "auto"


def compile_command(
    path: Annotated[Path, typer.Argument(help="Project folder (with gpux.yml) or a gpux.yml file.")] = Path("."),
    target: Annotated[
        list[str] | None, typer.Option("--target", "-t", help="Target to build (repeatable); default: build.targets.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for bundles.")] = Path("dist"),
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="gpux.yml to use instead of PATH/gpux.yml.")
    ] = None,
    precision: Annotated[Precision | None, typer.Option("--precision", help="Override build.precision.")] = None,
    optimize: Annotated[
        Optimize | None,
        typer.Option("--optimize", help="auto: build candidate variants, keep the fastest inside tolerance."),
    ] = None,
    fallback: Annotated[
        list[str] | None,
        typer.Option("--fallback", help="Fallback target, tried in order after the primary (repeatable); "
                     "overrides build.fallback."),
    ] = None,
    archive: Annotated[
        bool, typer.Option("--archive", help="Also write <bundle>.tar.gz, byte-identical across rebuilds.")
    ] = False,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Build the variant a policy file records (gpuxc policy export): no search."),
    ] = None,
    cache_dir: CacheDirOpt = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Build from scratch; neither read nor write the build cache.")
    ] = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Compile a project into one verified bundle per target."""
    from gpuxc.cache import restore as warm

    def progress(message: str) -> None:
        err(f"gpuxc: {message}")

    options: dict[str, Any] = {
        "precision": precision.value if precision else None,
        "optimize": optimize.value if optimize else None,
        "fallback": fallback or None,
        "archive": archive,
        "cache_dir": cache_dir,
        "use_cache": not no_cache,
    }
    loaded = None
    warm_options = options
    if policy is not None:
        from gpuxc.build.policy import load_policy

        if precision is not None or optimize is not None:
            err("error: --policy sets the precision and optimize it was built with; drop --precision/--optimize")
            raise typer.Exit(int(ExitCode.USAGE))
        loaded = load_policy(policy)
        target = loaded.select_targets(target)
        fixed, searched = loaded.overrides(None, None)
        warm_options = {**options, "precision": fixed, "optimize": searched, "policy": loaded.digest}
    # Every target cached: done without importing onnx, ONNX Runtime or the plugins.
    results = warm.restore_all(path, target or None, out, config, progress, **warm_options)
    if results is None:
        from gpuxc.build.pipeline import compile_project

        results = compile_project(path, target or None, out, config, progress, **options, policy=loaded)
    if json_out:
        typer.echo(json.dumps({"bundles": [r.to_json() for r in results]}, indent=2))
    else:
        for r in results:
            err(f"{r.target}: {r.path} ({r.variant}, verification {r.verification['status']})")


app.command("compile")(handle_errors(compile_command))
app.command("build", hidden=True, help="Alias of compile (GPUX's name).")(handle_errors(compile_command))
