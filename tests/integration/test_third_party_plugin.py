"""A third-party target plugin, installed only through an entry point (a ``*.dist-info`` folder on
PYTHONPATH), compiles a verified bundle with its own runtime adapter; gpuxc runs as a real
process."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from fixtures import models
from gpuxc.bundle.runner_source import template_root
from gpuxc.errors import ExitCode
from tests.integration.conftest import Proc, assert_one_error_line, run_cmd, write_project

MARKER = "# echo adapter: copied from the gpuxc_echo plugin's own template folder"

PLUGIN = textwrap.dedent(
    '''
    """gpuxc_echo: a third-party target that runs on ONNX Runtime's CPU provider."""

    from __future__ import annotations

    from pathlib import Path

    from onnx import ModelProto

    from gpuxc.project.model import save_model
    from gpuxc.passes import Pass, PassContext, PassResult, PassSpec
    from gpuxc.plugin import hookimpl
    from gpuxc.bundle.requirements import pinned
    from gpuxc.targets import Artifact, RuntimeSpec, Target, TargetOptions


    class EchoOptions(TargetOptions):
        stamp: str = "stamped by echo"


    class EchoStamp(Pass):
        name = "echo-stamp"
        description = "write a doc string into the model"

        def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
            out = ModelProto()
            out.CopyFrom(model)
            out.doc_string = "stamped by echo"
            return PassResult(model=out, modified=True, stats={"stamped": True})


    class EchoTarget(Target):
        name = "echo"
        description = "echo: ONNX Runtime CPU, third-party plugin"
        Options = EchoOptions
        template_dir = Path(__file__).resolve().parent / "templates"

        def plan(self, config, signature, options, variant):
            return [PassSpec("ort-optimize", {"level": "basic"}), PassSpec("echo-stamp")]

        def compile(self, model, ctx):
            save_model(model, ctx.bundle_dir / "model" / "model.onnx")
            return Artifact(entry="model/model.onnx", format="onnx", files=["model/model.onnx"])

        def runtime(self, options, artifact):
            return RuntimeSpec(
                adapter="echo/runtime.py",
                requirements=pinned(["onnxruntime", "numpy"]),
                providers=["CPUExecutionProvider"],
            )

        def verification_runtime(self):
            return "echo on onnxruntime CPUExecutionProvider"

        def execute(self, bundle_dir, artifact, inputs):
            from gpuxc.ort_session import run_onnxruntime

            cpu = ["CPUExecutionProvider"]
            return run_onnxruntime(bundle_dir / artifact.entry, inputs, providers=cpu)


    @hookimpl
    def gpuxc_register_targets(register):
        register(EchoTarget)


    @hookimpl
    def gpuxc_register_passes(register):
        register(EchoStamp)
    '''
)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder to put on PYTHONPATH: the ``gpuxc_echo`` package and its ``dist-info``."""
    site = tmp_path_factory.mktemp("plugin-site")
    package = site / "gpuxc_echo"
    (package / "templates" / "echo").mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN, encoding="utf-8")
    adapter = (template_root() / "onnxruntime" / "runtime.py").read_text(encoding="utf-8")
    (package / "templates" / "echo" / "runtime.py").write_text(MARKER + "\n" + adapter, encoding="utf-8")
    info = site / "gpuxc_echo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gpuxc_echo\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[gpuxc]\necho = gpuxc_echo\n", encoding="utf-8")
    return site


def _gpuxc(*args: str | Path, plugin_path: Path, cwd: Path, autoload: bool = True) -> Proc:
    env = {"PYTHONPATH": str(plugin_path)}
    if not autoload:
        env["GPUXC_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return run_cmd([sys.executable, "-m", "gpuxc", *args], cwd=cwd, env=env)


@pytest.fixture(scope="module")
def echo_build(plugin_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(project, bundle) compiled with ``-t echo``."""
    root = tmp_path_factory.mktemp("echo")
    project = write_project(root / "project", models.tiny_cnn(), name="echoed")
    proc = _gpuxc(
        "compile",
        project,
        "-t",
        "echo",
        "-o",
        root / "dist",
        "--json",
        plugin_path=plugin_path,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    [bundle] = json.loads(proc.stdout)["bundles"]
    assert bundle["target"] == "echo"
    assert bundle["verification"]["status"] == "passed", bundle
    return project, Path(bundle["path"])


def test_compile_with_a_third_party_target(echo_build: tuple[Path, Path]) -> None:
    _, bundle = echo_build
    assert bundle.name == "echoed-1.0.0-echo"
    manifest = json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))
    assert manifest["target"] == "echo"
    assert manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["runtime"] == "echo on onnxruntime CPUExecutionProvider"
    assert manifest["build"]["target_options"] == {"stamp": "stamped by echo"}
    assert manifest["runtime"]["adapter"] == "echo/runtime.py"


def test_third_party_passes_run_and_are_recorded(echo_build: tuple[Path, Path]) -> None:
    _, bundle = echo_build
    manifest = json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))
    records = {p["name"]: p for p in manifest["build"]["passes"]}
    assert list(records) == ["ort-optimize", "echo-stamp"]
    assert records["ort-optimize"]["params"]["level"] == "basic"
    assert records["echo-stamp"]["status"] == "applied"
    assert records["echo-stamp"]["stats"]["stamped"] is True
    assert onnx.load(str(bundle / "model" / "model.onnx")).doc_string == "stamped by echo"


def test_adapter_comes_from_the_plugin_template_dir(echo_build: tuple[Path, Path]) -> None:
    _, bundle = echo_build
    assert (bundle / "runner" / "runtime.py").read_text(encoding="utf-8").startswith(MARKER + "\n")


def test_echo_bundle_verifies_on_its_own(echo_build: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = echo_build
    proc = run_cmd([sys.executable, bundle, "verify"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verification passed" in proc.stdout


def test_targets_lists_the_plugin(plugin_path: Path, tmp_path: Path) -> None:
    proc = _gpuxc("targets", "--json", plugin_path=plugin_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {row["name"]: row for row in doc["targets"]}
    assert rows["echo"]["available"] is True
    assert rows["echo"]["plugin"] == "echo"
    assert rows["cpu"]["available"] is True
    assert "echo-stamp" in doc["passes"]


def test_disabled_autoload_hides_the_plugin(plugin_path: Path, tmp_path: Path) -> None:
    listed = _gpuxc("targets", "--json", plugin_path=plugin_path, cwd=tmp_path, autoload=False)
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    names = [row["name"] for row in doc["targets"]]
    assert "echo" not in names and "cpu" in names
    assert "echo-stamp" not in doc["passes"]
    project = write_project(tmp_path / "project", models.mlp())
    out = tmp_path / "dist"
    proc = _gpuxc(
        "compile",
        project,
        "-t",
        "echo",
        "-o",
        out,
        plugin_path=plugin_path,
        cwd=tmp_path,
        autoload=False,
    )
    assert proc.returncode == ExitCode.TARGET_UNAVAILABLE, proc.stderr
    assert_one_error_line(proc.stderr, contains=["unknown target 'echo'"])
    assert not out.exists() or list(out.iterdir()) == []
