"""``gpuxc policy export`` and ``gpuxc compile --policy`` from the command line: data on stdout,
messages on stderr, exit codes, and the build cache keeping replays and searches apart."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gpuxc.build.policy import export_policy
from gpuxc.cli import app
from gpuxc.errors import ExitCode
from tests.build.test_precision_repair import calibrated_project

BUNDLE = "outlier-1.0.0-cpu"


def gpuxc(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-policy")
    project = calibrated_project(root / "p")
    result = gpuxc("compile", project, "-o", root / "dist", "--no-cache")
    assert result.exit_code == 0, result.stderr
    return project, root / "dist" / BUNDLE


def test_export_prints_the_policy_on_stdout_or_writes_it(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = built
    printed = gpuxc("policy", "export", bundle)
    assert printed.exit_code == 0 and printed.stdout == export_policy(bundle) and printed.stderr == ""
    written = gpuxc("policy", "export", bundle, "--out", tmp_path / "policy.yml")
    assert written.exit_code == 0 and written.stdout == ""
    assert (tmp_path / "policy.yml").read_text(encoding="utf-8") == printed.stdout
    assert written.stderr.startswith(f"policy {tmp_path / 'policy.yml'}")


def test_export_of_a_folder_that_is_no_bundle_is_a_bundle_error(tmp_path: Path) -> None:
    result = gpuxc("policy", "export", tmp_path)
    assert result.exit_code == ExitCode.BUNDLE and "not a gpuxc bundle" in result.stderr


def test_policy_with_precision_or_optimize_is_a_usage_error(built: tuple[Path, Path], tmp_path: Path) -> None:
    project, bundle = built
    (tmp_path / "policy.yml").write_text(export_policy(bundle), encoding="utf-8")
    result = gpuxc("compile", project, "--policy", tmp_path / "policy.yml", "--optimize", "auto", "--no-cache")
    assert result.exit_code == ExitCode.USAGE and "drop --precision/--optimize" in result.stderr


def test_a_malformed_policy_is_a_config_error(built: tuple[Path, Path], tmp_path: Path) -> None:
    project, _ = built
    (tmp_path / "policy.yml").write_text("policy: 1\nvariant: [\n", encoding="utf-8")
    result = gpuxc("compile", project, "--policy", tmp_path / "policy.yml", "--no-cache", "--json")
    assert result.exit_code == ExitCode.CONFIG
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ConfigError" and error["message"].startswith(f"{tmp_path / 'policy.yml'}:3:1: ")


def test_the_cache_never_gives_a_replay_a_searched_bundle_nor_the_reverse(
    built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPUXC_NO_CACHE", raising=False)  # tests/conftest.py turns the cache off
    project, bundle = built
    policy = tmp_path / "policy.yml"
    policy.write_text(export_policy(bundle), encoding="utf-8")
    searched = ("compile", project, "-o", tmp_path / "dist", "--cache-dir", tmp_path / "c1")
    replayed = ("compile", project, "--policy", policy, "-o", tmp_path / "dist", "--cache-dir", tmp_path / "c1")
    assert "cache hit" not in gpuxc(*searched).stderr
    assert "cache hit" in gpuxc(*searched).stderr  # the cache is on, and this entry is the search's
    first = gpuxc(*replayed)
    assert first.exit_code == 0 and "cache hit" not in first.stderr and "no search" in first.stderr
    second = gpuxc(*replayed)
    assert second.exit_code == 0 and "cache hit" in second.stderr
    # The other way round, in a fresh cache: a replay stored first is no hit for the search.
    assert "cache hit" not in gpuxc(*replayed[:-1], tmp_path / "c2").stderr
    assert "cache hit" not in gpuxc(*searched[:-1], tmp_path / "c2").stderr


def test_policy_help_imports_no_runtime(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from gpuxc.cli import main\n"
        "sys.argv = ['gpuxc', 'policy', 'export', '--help']\n"
        "code = main()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'openvino'))\n"
        "print('HEAVY', code, heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert "HEAVY 0 []" in proc.stderr, proc.stderr


def test_a_bundle_from_before_policies_is_refused(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = built
    old = tmp_path / BUNDLE
    shutil.copytree(bundle, old)
    data = json.loads((old / "gpux-bundle.json").read_text(encoding="utf-8"))
    del data["build"]["variant_settings"]
    (old / "gpux-bundle.json").write_text(json.dumps(data), encoding="utf-8")
    result = gpuxc("policy", "export", old)
    assert result.exit_code == ExitCode.BUNDLE and result.stdout == ""
    assert "records no variant settings (made by gpuxc" in result.stderr
