"""The CLI app in process: command order, shared error handling, the bundle check."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gpuxc.cli import app
from gpuxc.cli.app import handle_errors, require_bundle
from gpuxc.errors import BundleError, ConfigError, ExitCode


def test_help_lists_the_commands_in_their_order() -> None:
    out = CliRunner().invoke(app, ["--help"]).stdout
    # Typer lists command groups (cache) after the commands.
    order = [out.index(f"  {name} ") for name in ("compile", "inspect", "targets", "init", "run", "serve", "verify",
                                                   "bench", "cache")]  # fmt: skip
    assert order == sorted(order)
    assert "  build " not in out  # the hidden alias


def test_a_gpuxc_error_is_one_line_and_its_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    @handle_errors
    def command(verbose: bool = False) -> None:
        raise ConfigError("gpux.yml:1:1: bad")

    with pytest.raises(typer.Exit) as exit_:
        command()
    assert exit_.value.exit_code == int(ExitCode.CONFIG)
    assert capsys.readouterr().err == "error: gpux.yml:1:1: bad\n"


def test_a_crash_is_an_internal_error(capsys: pytest.CaptureFixture[str]) -> None:
    @handle_errors
    def command(verbose: bool = False) -> None:
        raise KeyError("x")

    with pytest.raises(typer.Exit) as exit_:
        command()
    assert exit_.value.exit_code == int(ExitCode.INTERNAL)
    assert capsys.readouterr().err.startswith("internal error: KeyError")


def test_require_bundle_refuses_a_plain_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a gpuxc bundle"):
        require_bundle(tmp_path)
