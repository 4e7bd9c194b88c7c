"""The ``gpuxc`` command line, in process (Typer's CliRunner) and as real processes
(``python -m gpuxc`` and the ``gpuxc`` console script)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fixtures import models
from gpuxc.bundle.writer import STAGING_PREFIX
from gpuxc.cli import app
from gpuxc.errors import ExitCode
from tests.integration.conftest import (
    Proc,
    assert_one_error_line,
    error_lines,
    run_cmd,
    write_project,
)

Invoke = Callable[..., Proc]
MODES = ("clirunner", "module", "script")
WHERE_RE = re.compile(r"(\S*gpux\.yml):(\d+):(\d+):")


def _clirunner(args: list[str]) -> Proc:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash inside the CLI, not an exit code: show it
    return Proc(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(params=MODES)
def gpuxc(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gpuxc_script: Path,
) -> Invoke:
    """``gpuxc ARGS...`` run from ``tmp_path``, in each of the three ways users start it."""
    mode = request.param
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str | Path) -> Proc:
        if mode == "clirunner":
            return _clirunner([str(a) for a in args])
        prefix = [sys.executable, "-m", "gpuxc"] if mode == "module" else [gpuxc_script]
        return run_cmd([*prefix, *args], cwd=tmp_path)

    return invoke


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "proj", models.mlp())


def _staging(folder: Path) -> list[Path]:
    return sorted(folder.glob(STAGING_PREFIX + "*")) if folder.is_dir() else []


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- successful commands ---------------------------------------------------------------------------


def test_compile_json_prints_one_document_of_the_documented_shape(gpuxc: Invoke, project: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    proc = gpuxc("compile", project, "-t", "cpu", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert set(doc) == {"bundles"}
    [bundle] = doc["bundles"]
    assert {"target", "path", "verification"} <= set(bundle)
    assert bundle["target"] == "cpu"
    assert bundle["verification"]["status"] == "passed"
    assert Path(bundle["path"]) == (out / "demo-1.0.0-cpu").resolve()
    assert (Path(bundle["path"]) / "gpux-bundle.json").is_file()
    assert "Traceback" not in proc.stderr
    assert _staging(out) == []


def test_compile_without_json_writes_nothing_on_stdout(project: Path, tmp_path: Path) -> None:
    proc = _clirunner(["compile", str(project), "-o", str(tmp_path / "dist")])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "verification passed" in proc.stderr


def test_build_alias_compiles(project: Path, tmp_path: Path) -> None:
    proc = _clirunner(["build", str(project), "-t", "cpu", "-o", str(tmp_path / "dist"), "--json"])
    assert proc.returncode == 0, proc.stderr
    [bundle] = json.loads(proc.stdout)["bundles"]
    assert bundle["target"] == "cpu" and bundle["verification"]["status"] == "passed"
    assert (tmp_path / "dist" / "demo-1.0.0-cpu" / "gpux-bundle.json").is_file()


def test_compile_takes_targets_from_gpux_yml_by_default(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", models.mlp(), {"build": {"targets": ["cpu"]}}, name="fromyml")
    proc = _clirunner(["compile", str(project), "-o", str(tmp_path / "dist"), "--json"])
    assert proc.returncode == 0, proc.stderr
    assert [b["target"] for b in json.loads(proc.stdout)["bundles"]] == ["cpu"]


def test_targets_json_lists_cpu_available(gpuxc: Invoke) -> None:
    proc = gpuxc("targets", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {row["name"]: row for row in doc["targets"]}
    assert rows["cpu"]["available"] is True
    assert rows["cpu"]["verifies_here"] is True
    assert rows["cpu"]["plugin"] == "cpu"
    assert {"ort-optimize", "fix-shapes"} <= set(doc["passes"])


def test_inspect_model_json(gpuxc: Invoke, project: Path) -> None:
    proc = gpuxc("inspect", project / "model.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    sig = json.loads(proc.stdout)
    assert [(t["name"], t["dtype"], t["shape"]) for t in sig["inputs"]] == [("x", "float32", ["N", 8])]
    assert [(t["name"], t["dtype"], t["shape"]) for t in sig["outputs"]] == [("probs", "float32", ["N", 3])]
    assert sig["sha256"] == hashlib.sha256((project / "model.onnx").read_bytes()).hexdigest()
    assert sig["opsets"] == {"": 17}


def test_inspect_model_text(project: Path) -> None:
    proc = _clirunner(["inspect", str(project / "model.onnx")])
    assert proc.returncode == 0, proc.stderr
    assert "input x: float32 ['N', 8]" in proc.stdout
    assert "output probs: float32 ['N', 3]" in proc.stdout


def test_inspect_bundle_text_and_json(project: Path, tmp_path: Path) -> None:
    compiled = _clirunner(["compile", str(project), "-o", str(tmp_path / "dist")])
    assert compiled.returncode == 0, compiled.stderr
    bundle = tmp_path / "dist" / "demo-1.0.0-cpu"
    text = _clirunner(["inspect", str(bundle)])
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("bundle demo 1.0.0 for cpu")
    assert "verification: passed" in text.stdout
    assert "ort-optimize:" in text.stdout
    assert "input x: float32" in text.stdout
    doc = json.loads(_clirunner(["inspect", str(bundle), "--json"]).stdout)
    assert doc["target"] == "cpu" and doc["name"] == "demo"
    assert doc["verification"]["status"] == "passed"
    assert [p["name"] for p in doc["passes"]] == ["ort-optimize"]


def test_inspect_something_that_is_not_a_bundle_is_a_bundle_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _clirunner(["inspect", str(tmp_path / "empty")])
    assert proc.returncode == ExitCode.BUNDLE
    assert_one_error_line(proc.stderr, contains=["not a gpuxc bundle"])


def test_init_writes_a_gpux_yml_that_compiles(gpuxc: Invoke, tmp_path: Path) -> None:
    folder = tmp_path / "fresh"
    folder.mkdir()
    write_project(folder, models.int64_text_model())
    (folder / "gpux.yml").unlink()
    proc = gpuxc("init", folder / "model.onnx", "--name", "texty")
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load((folder / "gpux.yml").read_text(encoding="utf-8"))
    assert config["name"] == "texty"
    assert config["model"]["source"] == "./model.onnx"
    assert set(config["inputs"]) == {"input_ids", "attention_mask"}
    compiled = gpuxc("compile", folder, "-o", tmp_path / "dist", "--json")
    assert compiled.returncode == 0, compiled.stderr
    [bundle] = json.loads(compiled.stdout)["bundles"]
    assert bundle["verification"]["status"] == "passed"
    assert Path(bundle["path"]).name == "texty-1.0.0-cpu"


def test_init_refuses_to_overwrite_without_force(project: Path) -> None:
    before = (project / "gpux.yml").read_bytes()
    proc = _clirunner(["init", str(project / "model.onnx")])
    assert proc.returncode == ExitCode.CONFIG
    assert_one_error_line(proc.stderr, contains=["already exists"])
    assert (project / "gpux.yml").read_bytes() == before
    forced = _clirunner(["init", str(project / "model.onnx"), "--force"])
    assert forced.returncode == 0, forced.stderr
    assert (project / "gpux.yml").read_bytes() != before


def test_delegated_verify_and_run_use_the_bundle(project: Path, tmp_path: Path) -> None:
    assert _clirunner(["compile", str(project), "-o", str(tmp_path / "dist")]).returncode == 0
    proc = run_cmd(
        [sys.executable, "-m", "gpuxc", "verify", tmp_path / "dist" / "demo-1.0.0-cpu"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "verification passed" in proc.stdout
    ran = run_cmd(
        [
            sys.executable,
            "-m",
            "gpuxc",
            "run",
            tmp_path / "dist" / "demo-1.0.0-cpu",
            "--input",
            json.dumps({"x": [[0.0] * 8]}),
        ],
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert np.asarray(json.loads(ran.stdout)["probs"]).shape == (1, 3)
    bad = run_cmd(
        [
            sys.executable,
            "-m",
            "gpuxc",
            "run",
            tmp_path / "dist" / "demo-1.0.0-cpu",
            "--input",
            "{",
        ],
        cwd=tmp_path,
    )
    assert bad.returncode == 2  # the bundle's own exit code, passed through
    missing = run_cmd([sys.executable, "-m", "gpuxc", "verify", tmp_path], cwd=tmp_path)
    assert missing.returncode == ExitCode.BUNDLE
    assert_one_error_line(missing.stderr, contains=["not a gpuxc bundle"])


def test_version(gpuxc: Invoke) -> None:
    from gpuxc import __version__

    proc = gpuxc("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"gpuxc {__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["compile", "--help"], ["targets", "--help"]])
def test_help_does_not_import_heavy_runtimes(argv: list[str], tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "from gpuxc.cli import main\n"
        f"sys.argv = ['gpuxc', *{argv!r}]\n"
        "code = main()\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('onnx', 'onnxruntime', 'openvino', 'coremltools'))\n"
        "print('MODULES=' + json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
    )
    proc = run_cmd([sys.executable, "-c", script], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES=")]
    result = json.loads(line[len("MODULES=") :])
    assert result == {"code": 0, "heavy": []}
    assert "Usage" in proc.stdout


# -- bad input -------------------------------------------------------------------------------------

BASE = "name: demo\nmodel:\n  source: ./model.onnx\n"

# (id, gpux.yml text, extra CLI args, exit code, (line, column) of the error or None,
#  text in the message)
BAD_INPUTS = [
    (
        "unknown-key",
        BASE + "build:\n  targetz: [cpu]\n",
        [],
        ExitCode.CONFIG,
        (5, 3),
        "unknown key 'targetz'",
    ),
    (
        "wrong-type",
        BASE + 'serving:\n  port: "8080"\n',
        [],
        ExitCode.CONFIG,
        (5, 9),
        "serving.port",
    ),
    ("malformed-yaml", BASE + "inputs: [unclosed\n", [], ExitCode.CONFIG, (5, 1), "invalid YAML"),
    (
        "missing-model",
        "name: demo\nmodel:\n  source: ./missing.onnx\n",
        [],
        ExitCode.MODEL,
        (3, 11),
        "not found",
    ),
    (
        "unknown-input",
        BASE + "inputs:\n  nope:\n    type: float32\n",
        [],
        ExitCode.SIGNATURE,
        (5, 3),
        "'nope'",
    ),
    (
        "unknown-target-in-yml",
        BASE + "build:\n  targets: [cpu, nosuch]\n",
        [],
        ExitCode.TARGET_UNAVAILABLE,
        (5, 18),
        "unknown target 'nosuch'",
    ),
    (
        "unknown-target-option",
        BASE,
        ["-t", "nosuch"],
        ExitCode.TARGET_UNAVAILABLE,
        None,
        "unknown target 'nosuch'",
    ),
]


@pytest.mark.parametrize(
    ("text", "args", "code", "where", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_exits_with_its_code_and_one_line(
    gpuxc: Invoke,
    project: Path,
    tmp_path: Path,
    text: str,
    args: list[str],
    code: ExitCode,
    where: tuple[int, int] | None,
    message: str,
) -> None:
    (project / "gpux.yml").write_text(text, encoding="utf-8")
    out = tmp_path / "dist"
    proc = gpuxc("compile", project, *args, "-o", out)
    assert proc.returncode == int(code), (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout
    line = assert_one_error_line(proc.stderr, contains=[message])
    if where is not None:
        match = WHERE_RE.search(line)
        assert match is not None, line
        assert (tmp_path / match.group(1)).resolve() == (project / "gpux.yml").resolve()
        assert (int(match.group(2)), int(match.group(3))) == where
    assert not out.exists() or list(out.iterdir()) == []


def test_bad_input_with_json_prints_one_error_document(project: Path, tmp_path: Path) -> None:
    (project / "gpux.yml").write_text(BASE + "build:\n  targetz: [cpu]\n", encoding="utf-8")
    proc = _clirunner(["compile", str(project), "-o", str(tmp_path / "dist"), "--json"])
    assert proc.returncode == ExitCode.CONFIG
    doc = json.loads(proc.stdout)
    assert doc["bundles"] == []
    assert doc["error"]["exit_code"] == ExitCode.CONFIG
    assert doc["error"]["type"] == "ConfigError"
    assert "targetz" in doc["error"]["message"]


def test_verbose_shows_the_traceback(gpuxc: Invoke, project: Path, tmp_path: Path) -> None:
    (project / "gpux.yml").write_text(BASE + "build:\n  targetz: [cpu]\n", encoding="utf-8")
    proc = gpuxc("compile", project, "-o", tmp_path / "dist", "-v")
    assert proc.returncode == ExitCode.CONFIG
    assert "Traceback" in proc.stderr
    assert "ConfigError" in proc.stderr
    assert error_lines(proc.stderr)[-1].startswith("error: ")


# -- verification failure --------------------------------------------------------------------------


@pytest.fixture
def perturbed_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cpu target's compile-time execution returns outputs far from the reference."""
    from gpuxc_cpu.target import CpuTarget

    real = CpuTarget.execute

    def execute(self, bundle_dir, artifact, inputs):  # type: ignore[no-untyped-def]
        return {k: (v + np.ones_like(v)).astype(v.dtype) for k, v in real(self, bundle_dir, artifact, inputs).items()}

    monkeypatch.setattr(CpuTarget, "execute", execute)


def test_verification_failure_exits_10_and_writes_no_bundle(project: Path, tmp_path: Path, perturbed_cpu: None) -> None:
    out = tmp_path / "dist"
    proc = _clirunner(["compile", str(project), "-o", str(out), "--json"])
    assert proc.returncode == ExitCode.VERIFICATION_FAILED, proc.stderr
    assert_one_error_line(proc.stderr, contains=["differs from the source model"])
    assert json.loads(proc.stdout)["error"]["exit_code"] == ExitCode.VERIFICATION_FAILED
    assert not (out / "demo-1.0.0-cpu").exists()
    assert list(out.iterdir()) == []  # no staging folder either


def test_verification_failure_leaves_an_existing_bundle_untouched(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "dist"
    good = _clirunner(["compile", str(project), "-o", str(out)])
    assert good.returncode == 0, good.stderr
    bundle = out / "demo-1.0.0-cpu"
    manifest_before = (bundle / "gpux-bundle.json").read_bytes()
    tree_before = _tree_digest(bundle)

    from gpuxc_cpu.target import CpuTarget

    real = CpuTarget.execute
    monkeypatch.setattr(
        CpuTarget,
        "execute",
        lambda self, b, a, i: {k: v * 2 + 1 for k, v in real(self, b, a, i).items()},
    )
    # A different model under the same name and version, so that a replaced bundle would show.
    write_project(project, models.mlp(batch=1))
    bad = _clirunner(["compile", str(project), "-o", str(out)])
    assert bad.returncode == ExitCode.VERIFICATION_FAILED, bad.stderr
    assert (bundle / "gpux-bundle.json").read_bytes() == manifest_before
    assert _tree_digest(bundle) == tree_before
    assert sorted(p.name for p in out.iterdir()) == ["demo-1.0.0-cpu"]


def test_recompiling_replaces_the_bundle_and_leaves_no_staging(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    assert _clirunner(["compile", str(project), "-o", str(out)]).returncode == 0
    bundle = out / "demo-1.0.0-cpu"
    (bundle / "stale.txt").write_text("from the previous build", encoding="utf-8")
    again = _clirunner(["compile", str(project), "-o", str(out)])
    assert again.returncode == 0, again.stderr
    assert not (bundle / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["demo-1.0.0-cpu"]
    assert _staging(out) == []


def test_compile_refuses_to_replace_a_folder_that_is_not_a_bundle(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    (out / "demo-1.0.0-cpu").mkdir(parents=True)
    (out / "demo-1.0.0-cpu" / "precious.txt").write_text("keep me", encoding="utf-8")
    proc = _clirunner(["compile", str(project), "-o", str(out)])
    assert proc.returncode == ExitCode.BUNDLE
    assert_one_error_line(proc.stderr, contains=["not a gpuxc bundle"])
    assert (out / "demo-1.0.0-cpu" / "precious.txt").read_text(encoding="utf-8") == "keep me"
    assert _staging(out) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_bundle_folder_gets_the_usual_mode_not_a_private_temp_mode(project: Path, tmp_path: Path) -> None:
    """The bundle is assembled in a mkdtemp folder (0700); once published, other users (a service
    account, a container user) must be able to read it like any folder made by ``mkdir``."""
    out = tmp_path / "dist"
    assert _clirunner(["compile", str(project), "-o", str(out)]).returncode == 0
    probe = out / "probe"
    probe.mkdir()
    assert (out / "demo-1.0.0-cpu").stat().st_mode & 0o777 == probe.stat().st_mode & 0o777
