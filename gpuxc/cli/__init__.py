"""The ``gpuxc`` command line (Typer). Thin commands over library calls.

Human messages and progress go to stderr, data (``--json``) to stdout. gpuxc
errors become one line and their documented exit code here, and only here;
a traceback is shown only with ``-v``. Heavy modules (onnx, onnxruntime) are
imported inside commands so that ``gpuxc --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gpuxc import __version__
from gpuxc.bundle import layout
from gpuxc.errors import BundleError, ConfigError, ExitCode, GpuxcError, first_line

app = typer.Typer(
    name="gpuxc",
    help="Ahead-of-time compiler for ONNX models: gpux.yml + model.onnx -> verified, deployable bundles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8_dynamic = "int8-dynamic"
    int8_static = "int8-static"
    auto = "auto"


class Optimize(str, Enum):
    fixed = "fixed"
    auto = "auto"


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show progress details and tracebacks.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Build cache folder (default: $GPUXC_CACHE_DIR, else the user cache dir)."),
]


def _err(message: str) -> None:
    typer.echo(message, err=True)


def handle_errors(func: F) -> F:
    """Turn gpuxc errors into one line on stderr plus their exit code (traceback only with -v)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose"))
        try:
            return func(*args, **kwargs)
        except GpuxcError as exc:
            if verbose:
                traceback.print_exc()
            if kwargs.get("json_out"):
                typer.echo(json.dumps({"bundles": [], "error": _error_json(exc)}))
            _err(f"error: {exc}")
            raise typer.Exit(int(exc.exit_code)) from None
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if verbose:
                traceback.print_exc()
            _err(f"internal error: {type(exc).__name__}: {first_line(exc)} "
                 "(run with -v for the traceback, and please report it)")  # fmt: skip
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper  # type: ignore[return-value]


def _error_json(exc: GpuxcError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "exit_code": int(exc.exit_code)}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gpuxc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """gpuxc: compile gpux.yml projects into verified bundles per target."""


def _compile(
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
    archive: Annotated[
        bool, typer.Option("--archive", help="Also write <bundle>.tar.gz, byte-identical across rebuilds.")
    ] = False,
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
        _err(f"gpuxc: {message}")

    options: dict[str, Any] = {
        "precision": precision.value if precision else None,
        "optimize": optimize.value if optimize else None,
        "archive": archive,
        "cache_dir": cache_dir,
        "use_cache": not no_cache,
    }
    # Every target cached: done without importing onnx, ONNX Runtime or the plugins.
    results = warm.restore_all(path, target or None, out, config, progress, **options)
    if results is None:
        from gpuxc.build.pipeline import compile_project

        results = compile_project(path, target or None, out, config, progress, **options)
    if json_out:
        typer.echo(json.dumps({"bundles": [r.to_json() for r in results]}, indent=2))
    else:
        for r in results:
            _err(f"{r.target}: {r.path} ({r.variant}, verification {r.verification['status']})")


app.command("compile")(handle_errors(_compile))
app.command("build", hidden=True, help="Alias of compile (GPUX's name).")(handle_errors(_compile))


@app.command()
@handle_errors
def inspect(
    path: Annotated[Path, typer.Argument(help="An ONNX model file or a bundle folder.")],
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    target: Annotated[
        str | None, typer.Option("--target", help="Check the model converts for a target (coreml).")
    ] = None,
) -> None:
    """Describe a model (signature, opsets, size) or a bundle (manifest summary)."""
    if target is not None:
        _inspect_convertible(path, target, json_out)
        return
    if path.is_dir():
        from gpuxc.bundle.manifest import read_manifest

        manifest = read_manifest(path)
        fields = {"name", "version", "target", "gpuxc_version", "inputs", "outputs", "verification", "artifact",
                  "runtime", "source"}  # fmt: skip
        data = manifest.model_dump(mode="json", include=fields)
        data["passes"] = [{"name": p.name, "status": p.status, "seconds": p.seconds} for p in manifest.build.passes]
        if json_out:
            typer.echo(json.dumps(data, indent=2, default=str))
            return
        typer.echo(f"bundle {manifest.name} {manifest.version} for {manifest.target} (gpuxc {manifest.gpuxc_version})")
        typer.echo(f"  artifact: {manifest.artifact.entry} ({manifest.artifact.format})")
        typer.echo(f"  verification: {manifest.verification.status}"
                   + (f" ({manifest.verification.reason})" if manifest.verification.reason else ""))  # fmt: skip
        typer.echo(f"  passes: {', '.join(p['name'] + ':' + p['status'] for p in data['passes']) or 'none'}")
        for kind, tensors in (("input", manifest.inputs), ("output", manifest.outputs)):
            for t in tensors:
                typer.echo(f"  {kind} {t.name}: {t.dtype} {t.shape}" + (f" labels={len(t.labels)}" if t.labels else ""))
        return
    from gpuxc.project.isolation import load_model

    sig = load_model(path).signature
    if json_out:
        typer.echo(sig.model_dump_json(indent=2))
        return
    typer.echo(f"{path.name}: IR {sig.ir_version}, opsets {sig.opsets}, {sig.node_count} nodes, {sig.size_bytes} bytes"
               + (f", producer {sig.producer}" if sig.producer else ""))  # fmt: skip
    for kind, tensors in (("input", sig.inputs), ("output", sig.outputs)):
        for t in tensors:
            typer.echo(f"  {kind} {t.name}: {t.dtype} {t.shape}")
    if sig.external_data:
        typer.echo(f"  external data: {', '.join(sig.external_data)}")
    typer.echo(f"  sha256 {sig.sha256}")


def _inspect_convertible(path: Path, target: str, json_out: bool) -> None:
    """Whether the model translates for ``target``, and which op types it lacks (no build)."""
    if target != "coreml":
        raise ConfigError(f"inspect --target supports only coreml, not '{target}'")
    if path.is_dir():
        raise BundleError(f"{path}: inspect --target takes an ONNX model file, not a bundle")
    from gpuxc_coreml.translate import unsupported_ops  # imported here: the other commands do not need it

    from gpuxc.project.isolation import load_model

    loaded = load_model(path)
    raw = unsupported_ops(loaded.proto)
    missing, shapes = raw, None
    if raw:
        # Shape arithmetic (Shape, Range, Mod, ...) folds away once input shapes are fixed, as
        # compile does with build.shapes: predict with the same passes at the default sizes.
        missing, shapes = _unsupported_after_folding(loaded, path, target, unsupported_ops) or (raw, None)
    if json_out:
        typer.echo(json.dumps({"target": target, "convertible": not missing, "unsupported": missing,
                               "unsupported_before_folding": raw, "folded_at_shapes": shapes}))  # fmt: skip
        return
    if missing:
        typer.echo(f"{path.name}: not convertible to {target}; missing ops: "
                   + ", ".join(f"{op} x{n}" for op, n in missing.items()))  # fmt: skip
    elif raw:
        typer.echo(f"{path.name}: translates for {target} once input shapes are fixed (e.g. build.shapes: {shapes}); "
                   f"{', '.join(raw)} fold away")  # fmt: skip
    else:
        typer.echo(f"{path.name}: every op translates for {target}")


def _unsupported_after_folding(loaded: Any, path: Path, target: str, unsupported_ops: Any) -> Any:
    """(missing ops, shapes) after fix-shapes + constant folding at the default sizes, or None."""
    import tempfile

    from gpuxc.passes import PassContext, PassManager, PassSpec
    from gpuxc.plugin import get_registry
    from gpuxc.project.calibration import resolve_model_shapes

    try:
        shapes = resolve_model_shapes(loaded.signature)
        specs = [PassSpec("fix-shapes", {"shapes": shapes}), PassSpec("fold-constants", {}, required=False),
                 PassSpec("ort-optimize", {"level": "basic"})]  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="gpuxc-inspect-") as tmp:
            ctx = PassContext(workdir=Path(tmp), target=target, model_dir=path.parent)
            model, _ = PassManager(get_registry()).run(loaded.proto, specs, ctx)
        return unsupported_ops(model), shapes
    except GpuxcError:
        return None


@app.command()
@handle_errors
def targets(json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """List every target: available on this machine or not, why, and how to install it."""
    from gpuxc.plugin import get_registry

    registry = get_registry()
    rows = []
    for name, cls in sorted(registry.targets.items()):
        target = cls()
        availability = target.check_available()
        rows.append({
            "name": name,
            "description": cls.description,
            "available": availability.available,
            "reason": availability.reason,
            "install_hint": availability.install_hint or (None if availability.available else cls.install_hint),
            "verifies_here": availability.available
            and target.why_unverifiable() is None
            and target.why_stand_in() is None,
            "verify_note": (target.why_unverifiable() or target.why_stand_in())
            if availability.available
            else None,
            "plugin": registry.origins.get(f"target:{name}"),
        })  # fmt: skip
    if json_out:
        typer.echo(json.dumps({"targets": rows, "passes": sorted(registry.passes)}, indent=2))
        return
    for row in rows:
        state = "available" if row["available"] else "unavailable"
        typer.echo(f"{row['name']:<10} {state:<12} {row['description']}")
        if not row["available"]:
            typer.echo(
                f"{'':<10} reason: {row['reason']}"
                + (f"; install: {row['install_hint']}" if row["install_hint"] else "")
            )
        elif row["verify_note"]:
            typer.echo(f"{'':<10} not verified here: {row['verify_note']}")


cache_app = typer.Typer(help="The build cache: list or clear cached bundles.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
@handle_errors
def cache_ls(cache_dir: CacheDirOpt = None, json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """List cached bundles: key, project, target, variant, size, last use."""
    from gpuxc.cache.store import BuildCache, default_cache_dir

    cache = BuildCache(cache_dir if cache_dir is not None else default_cache_dir())
    entries = cache.entries()
    if json_out:
        rows = [{"key": e.key, "size_bytes": e.size_bytes, **{k: v for k, v in e.info.items() if k != "files"}}
                for e in entries]  # fmt: skip
        typer.echo(json.dumps({"cache_dir": str(cache.root), "entries": rows}, indent=2))
        return
    _err(f"cache {cache.root}: {len(entries)} entries, {sum(e.size_bytes for e in entries) / 2**20:.1f} MiB")
    for e in entries:
        if "corrupted" in e.info:
            typer.echo(f"{e.key[:12]}  corrupted: {e.info['corrupted']}")
            continue
        i = e.info
        typer.echo(
            f"{e.key[:12]}  {i.get('name')}-{i.get('version')}  {i.get('target')}  {i.get('variant')}  "
            f"{e.size_bytes / 2**20:.1f} MiB  last used {i.get('last_used')}"
        )


@cache_app.command("clear")
@handle_errors
def cache_clear(cache_dir: CacheDirOpt = None, verbose: VerboseOpt = False) -> None:
    """Remove every cached bundle."""
    from gpuxc.cache.store import BuildCache, default_cache_dir

    cache = BuildCache(cache_dir if cache_dir is not None else default_cache_dir())
    count, freed = cache.clear()
    _err(f"cache {cache.root}: removed {count} entries, {freed / 2**20:.1f} MiB")


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
    """Write a gpux.yml from a model's signature."""
    from gpuxc.project.scaffold import write_config

    path = write_config(model, out, name, force)
    _err(f"wrote {path}")


def _delegate(command: str) -> Callable[..., None]:
    def run_bundle(
        ctx: typer.Context,
        bundle: Annotated[Path, typer.Argument(help="A bundle folder made by gpuxc compile.")],
        verbose: VerboseOpt = False,
    ) -> None:
        if not (bundle / layout.MANIFEST_NAME).is_file() or not (bundle / layout.MAIN).is_file():
            raise BundleError(f"{bundle}: not a gpuxc bundle (no gpux-bundle.json / __main__.py)")
        env = dict(os.environ)
        code = subprocess.call([sys.executable, str(bundle), command, *ctx.args], env=env)
        raise typer.Exit(code)

    run_bundle.__doc__ = f"Delegate to the bundle's own runner: python BUNDLE {command} [ARGS...]"
    return run_bundle


for _name in ("run", "serve"):
    app.command(_name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        handle_errors(_delegate(_name))
    )


def _require_bundle(bundle: Path) -> None:
    if not (bundle / layout.MANIFEST_NAME).is_file() or not (bundle / layout.MAIN).is_file():
        raise BundleError(f"{bundle}: not a gpuxc bundle (no gpux-bundle.json / __main__.py)")


@app.command()
@handle_errors
def verify(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder made by gpuxc compile.")],
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
    _require_bundle(bundle)
    if integrity:
        from gpuxc.bundle.manifest import read_manifest
        from gpuxc.bundle.writer import integrity_problems

        problems = integrity_problems(bundle, read_manifest(bundle))
        if json_out:
            typer.echo(json.dumps({"bundle": str(bundle), "intact": not problems, "problems": problems}))
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BundleError(f"{bundle}: integrity check failed: {problems[0]}{more}")
        if not json_out:
            typer.echo(f"{bundle}: intact ({len(read_manifest(bundle).files)} files match the manifest)")
        return
    if against is None:
        if inputs is not None:
            raise BundleError("--inputs needs --against MODEL.onnx")
        cmd = [sys.executable, str(bundle), "verify"] + (["--json"] if json_out else [])
        raise typer.Exit(subprocess.call(cmd))
    from gpuxc.bundle.against import verify_against
    from gpuxc.errors import VerificationFailed

    report = verify_against(bundle, against, inputs, samples)
    if json_out:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        typer.echo(f"{report['target']} bundle vs {against.name} on {report['samples']} sample(s) ({report['inputs']})")
        typer.echo(f"  {'output':<24} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'top-1':>7} {'mismatches':>10}")
        for name, m in report["outputs"].items():

            def cell(key: str, fmt: str, m: dict[str, Any] = m) -> str:
                value = m.get(key)
                return format(value, fmt) if isinstance(value, (int, float)) else "-"

            typer.echo(
                f"  {name[:24]:<24} {cell('max_abs', '.3g'):>10} {cell('max_rel', '.3g'):>10} "
                f"{cell('cosine', '.6f'):>10} {cell('top1_agreement', '.3f'):>7} {cell('mismatches', 'd'):>10}"
            )
        typer.echo(f"verification {report['status']}")
    if report["status"] != "passed":
        raise VerificationFailed(f"bundle differs from {against.name} beyond tolerance: {report['failures'][0]}")


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
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Latency p50/p90/p99, throughput and peak RSS of bundles (and of the raw model with --compare)."""
    from gpuxc.bundle import bench as benchmod

    for b in bundles:
        _require_bundle(b)
    if compare is not None:
        result = benchmod.compare_runs(compare, bundles, runs, warmup, threads, rounds)
        summary = result["results"]
    else:
        summary = {str(b): benchmod.bench_bundle(b, runs, warmup, threads) for b in bundles}
        result = {"runs": runs, "results": summary}
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        for line in benchmod.table(summary):
            typer.echo(line)


def main() -> int:
    try:
        app(standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
