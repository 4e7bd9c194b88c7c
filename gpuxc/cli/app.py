"""The Typer app every command registers on, the options commands share, and errors → exit codes.

gpuxc errors become one line and their documented exit code here, and only here; a traceback is
shown only with ``-v``. Imports nothing heavy: ``gpuxc --help`` loads every command module.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gpuxc import __version__
from gpuxc.bundle import layout
from gpuxc.errors import BundleError, ExitCode, GpuxcError, first_line

app = typer.Typer(
    name="gpuxc",
    help="Ahead-of-time compiler for ONNX models: gpux.yml + model.onnx -> verified, deployable bundles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])

VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show progress details and tracebacks.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Build cache folder (default: $GPUXC_CACHE_DIR, else the user cache dir)."),
]
BundleArg = Annotated[Path, typer.Argument(help="A bundle folder made by gpuxc compile.")]


def err(message: str) -> None:
    """A human message on stderr (stdout is for data)."""
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
            err(f"error: {exc}")
            raise typer.Exit(int(exc.exit_code)) from None
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            err("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if verbose:
                traceback.print_exc()
            err(f"internal error: {type(exc).__name__}: {first_line(exc)} "
                "(run with -v for the traceback, and please report it)")  # fmt: skip
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper  # type: ignore[return-value]


def _error_json(exc: GpuxcError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "exit_code": int(exc.exit_code)}


def require_bundle(bundle: Path) -> None:
    """A folder with a manifest and a runner, or a BundleError."""
    if not (bundle / layout.MANIFEST_NAME).is_file() or not (bundle / layout.MAIN).is_file():
        raise BundleError(f"{bundle}: not a gpuxc bundle (no gpux-bundle.json / __main__.py)")


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
