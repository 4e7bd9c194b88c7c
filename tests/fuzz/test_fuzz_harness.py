"""The fuzz harness's checks are not vacuous: a compile that misbehaves in each way is caught."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pytest

from fixtures import models
from gpuxc.bundle.writer import STAGING_PREFIX
from gpuxc.errors import ConfigError
from tests.fuzz.harness import Figures, Sandbox, isolate

GPUX_YML = b"name: demo\nmodel:\n  source: ./model.onnx\n"


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fake(project: Path, targets: list[str], out: Path) -> Any:
        raise exc

    return fake


class _TwoLines(ConfigError):
    """A GpuxcError whose text has a line break (built so, whatever GpuxcError does with messages)."""

    def __str__(self) -> str:
        return "two\nlines"


class _LineSeparator(ConfigError):
    def __str__(self) -> str:
        return "one\u2028two"


def _write_project(project: Path, targets: list[str], out: Path) -> Any:
    (project / "model.onnx").write_bytes(b"changed")
    raise ConfigError("refused")


def _leave_temp(project: Path, targets: list[str], out: Path) -> Any:
    fd, _ = tempfile.mkstemp()
    os.close(fd)
    raise ConfigError("refused")


def _write_cwd(project: Path, targets: list[str], out: Path) -> Any:
    Path("dist").mkdir()
    raise ConfigError("refused")


def _leave_staging(project: Path, targets: list[str], out: Path) -> Any:
    (out / f"{STAGING_PREFIX}1-demo").mkdir(parents=True)
    raise ConfigError("refused")


def _incomplete_bundle(project: Path, targets: list[str], out: Path) -> Any:
    (out / "demo-1.0.0-cpu").mkdir(parents=True)
    return [SimpleNamespace(path=out / "demo-1.0.0-cpu")]


def _read_outside(project: Path, targets: list[str], out: Path) -> Any:
    (project / "link.bin").read_bytes()
    raise ConfigError("refused")


@pytest.mark.parametrize(
    ("fake", "counter"),
    [
        (_raise(ValueError("boom")), "uncaught"),
        (_raise(MemoryError()), "uncaught"),
        (_raise(SystemExit(3)), "uncaught"),
        (_raise(_TwoLines("refused")), "bad_messages"),
        (_raise(_LineSeparator("refused")), "bad_messages"),
        (_write_project, "outside_writes"),
        (_leave_temp, "outside_writes"),
        (_write_cwd, "outside_writes"),
        (_leave_staging, "partial_bundles"),
        (_incomplete_bundle, "partial_bundles"),
        (_read_outside, "outside_reads"),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_each_kind_of_misbehaviour_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: Any,
                                              counter: str) -> None:  # fmt: skip
    figures = Figures("self-test")
    sandbox = Sandbox(tmp_path / "sandbox", figures, watch_outside_reads=True)
    onnx.save(models.mlp(), sandbox.template / "model.onnx")
    (sandbox.template / "gpux.yml").write_bytes(GPUX_YML)
    os.symlink(os.path.join("..", "outside", "secret.bin"), sandbox.template / "link.bin")
    isolate(monkeypatch, sandbox)
    sandbox.freeze()
    monkeypatch.setattr("gpuxc.build.pipeline.compile_project", fake)

    sandbox.run({}, "self-test")

    assert getattr(figures, counter) == 1, figures.line()
    assert figures.violation_count >= 1 and (tmp_path / "failures" / "1").is_dir()


def test_a_clean_compile_counts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = Figures("self-test")
    sandbox = Sandbox(tmp_path / "sandbox", figures)
    onnx.save(models.mlp(), sandbox.template / "model.onnx")
    (sandbox.template / "gpux.yml").write_bytes(GPUX_YML)
    isolate(monkeypatch, sandbox)
    sandbox.freeze()

    assert sandbox.run({}, "self-test") == "compiled"
    assert figures.compiled == 1 and figures.violation_count == 0, figures.violations
