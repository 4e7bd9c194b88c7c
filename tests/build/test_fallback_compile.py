"""Fallback variants (build.fallback, ``--fallback``; issue 16), compile side: one bundle holding the
primary's artifact under model/ and each fallback's under variants/<target>/, with its adapter as
runner/runtime_<target>.py, every variant verified like its own build and listed in the manifest."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner, Result

from fixtures import models
from gpuxc.build.fallback import check_fallback_targets
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle.runner_source import template_root, variant_module
from gpuxc.cache import restore as warm
from gpuxc.cli import app
from gpuxc.errors import ConfigError, ExitCode, TargetUnavailable
from gpuxc.ort_session import run_onnxruntime
from tests.plugins.gpuxc_tensorrt.test_tensorrt_contract import run_with_fakes, write_fake_site

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "image-classifier"


def gpuxc(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))


def write_project(folder: Path, model: onnx.ModelProto, yml: str = "") -> Path:
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    (folder / "gpux.yml").write_text(f"name: fb\nmodel:\n  source: ./model.onnx\n{yml}", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def openvino_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fallback-ov")
    project = write_project(root / "p", models.mlp())
    [result] = compile_project(project, ["openvino"], root / "dist", fallback=["cpu"], use_cache=False)
    return result.path


def test_variants_are_the_primary_then_the_fallbacks_in_order(openvino_bundle: Path) -> None:
    m = manifest_of(openvino_bundle)
    assert [(v["target"], v["module"]) for v in m["variants"]] == [("openvino", "runtime"), ("cpu", "runtime_cpu")]
    primary = m["variants"][0]
    for field in ("artifact", "runtime", "verification"):
        assert primary[field] == m[field]
    assert (primary["precision"], primary["variant"]) == (m["build"]["precision"], m["build"]["variant"])
    assert [v["verification"]["status"] for v in m["variants"]] == ["passed", "passed"]
    assert m["config"]["build"]["fallback"] == ["cpu"]


def test_each_variant_s_files_exist_and_are_listed_with_their_digests(openvino_bundle: Path) -> None:
    m = manifest_of(openvino_bundle)
    listed = {f["path"]: f["sha256"] for f in m["files"]}
    fallback = m["variants"][1]["artifact"]["entry"]
    assert fallback == "variants/cpu/model.onnx" and m["artifact"]["entry"] == "model/model.xml"
    for rel in (m["artifact"]["entry"], fallback, "runner/runtime.py", "runner/runtime_cpu.py"):
        assert listed[rel] == hashlib.sha256((openvino_bundle / rel).read_bytes()).hexdigest(), rel
    assert not any(p.startswith("variants/") and not p.startswith("variants/cpu/") for p in listed)


def test_the_fallback_adapter_is_the_onnxruntime_one_byte_for_byte(openvino_bundle: Path) -> None:
    copied = (openvino_bundle / "runner" / "runtime_cpu.py").read_bytes()
    assert copied == (template_root() / "onnxruntime" / "runtime.py").read_bytes()
    assert (openvino_bundle / "runner" / "runtime.py").read_bytes() == (
        template_root() / "openvino" / "runtime.py").read_bytes()  # fmt: skip


def test_the_fallback_artifact_gives_the_reference_outputs(openvino_bundle: Path) -> None:
    inputs = dict(np.load(openvino_bundle / "reference" / "inputs.npz"))
    expected = dict(np.load(openvino_bundle / "reference" / "outputs.npz"))
    got = run_onnxruntime(openvino_bundle / "variants" / "cpu" / "model.onnx", inputs)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_requirements_are_the_union_and_each_variant_keeps_its_own(openvino_bundle: Path) -> None:
    m = manifest_of(openvino_bundle)
    lines = [line for line in (openvino_bundle / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]  # fmt: skip
    ov, cpu = (v["runtime"]["requirements"] for v in m["variants"])
    assert any(r.startswith("openvino==") for r in ov) and any(r.startswith("onnxruntime==") for r in cpu)
    assert set(ov) | set(cpu) <= set(lines) and len(lines) == len(set(lines))
    assert lines.index(ov[0]) < lines.index(next(r for r in cpu if r not in ov))  # the primary's first


def test_inspect_lists_the_variants(openvino_bundle: Path) -> None:
    result = gpuxc("inspect", openvino_bundle)
    assert result.exit_code == 0
    assert "variant openvino (primary): model/model.xml fp32, verification passed" in result.stdout
    assert "variant cpu (fallback 1): variants/cpu/model.onnx fp32, verification passed" in result.stdout


def test_a_bundle_without_fallback_has_no_variants(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", models.mlp())
    [result] = compile_project(project, ["cpu"], tmp_path / "dist", use_cache=False)
    m = manifest_of(result.path)
    assert m["variants"] == [] and m["config"]["build"]["fallback"] == []
    assert not (result.path / "variants").exists()
    assert sorted(p.name for p in (result.path / "runner").glob("runtime*.py")) == ["runtime.py"]


def test_tensorrt_with_a_cpu_fallback(tmp_path: Path) -> None:
    """The primary cannot run here (unverified), the fallback passed; under the TensorRT stand-in the
    primary's adapter still builds and runs from its usual place, and the cpu adapter runs its variant."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import make_model
    finally:
        sys.path.remove(str(EXAMPLE))
    project = write_project(tmp_path / "p", make_model.build_model())
    result = gpuxc("compile", project, "-t", "tensorrt", "--fallback", "cpu", "-o", tmp_path / "dist", "--no-cache")
    assert result.exit_code == 0, result.stderr
    bundle = tmp_path / "dist" / "fb-1.0.0-tensorrt"
    variants = manifest_of(bundle)["variants"]
    assert [(v["target"], v["verification"]["status"]) for v in variants] == [("tensorrt", "unverified"),
                                                                               ("cpu", "passed")]  # fmt: skip
    (tmp_path / "fake-site").mkdir()
    fakes = write_fake_site(tmp_path / "fake-site")
    shapes = run_with_fakes(fakes, bundle, f"""
        import json
        from pathlib import Path
        import numpy as np
        import runner, runner.runtime_cpu as cpu
        image = np.zeros((1, 3, 64, 64), np.float32)
        trt = runner.load({str(bundle)!r}).infer({{"image": image}})["probs"]
        entry = json.loads(Path({str(bundle)!r}, "gpux-bundle.json").read_text())["variants"][1]["artifact"]
        adapter = cpu.Adapter(Path({str(bundle)!r}, entry["entry"]), entry["settings"], "cpu", [])
        out = adapter.run({{"image": image}}, ["probs"], 10.0)["probs"]
        print(json.dumps([list(trt.shape), list(out.shape)]))
    """, tmp_path)  # fmt: skip
    assert shapes == [[1, 5], [1, 5]]
    if importlib.util.find_spec("tensorrt") is None:  # the runner (runner/variants.py) falls back to cpu
        info = subprocess.run([sys.executable, str(bundle), "info"], capture_output=True, text=True, cwd=tmp_path)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["variant"]["target"] == "cpu" and "variant tensorrt skipped" in info.stderr
        verify = subprocess.run([sys.executable, str(bundle), "verify"], capture_output=True, text=True, cwd=tmp_path)
        assert verify.returncode == 0 and "verification passed" in verify.stdout


def test_a_fallback_without_the_build_precision_is_built_at_fp32_and_says_so(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", models.mlp())
    [result] = compile_project(project, ["cpu"], tmp_path / "dist", precision="int8-dynamic", fallback=["openvino"],
                               use_cache=False)  # fmt: skip
    cpu, ov = manifest_of(result.path)["variants"]
    assert (cpu["precision"], ov["precision"]) == ("int8-dynamic", "fp32")
    assert ov["note"] == "built at fp32: the openvino target does not offer int8-dynamic"
    assert ov["verification"]["status"] == "passed"


@pytest.mark.parametrize(
    ("yml", "cli", "code", "message"),
    [
        ("  fallback: [cpux]\n", [], ExitCode.TARGET_UNAVAILABLE,
         "gpux.yml:6:14: unknown fallback target 'cpux' (did you mean 'cpu'?)"),
        ("  fallback: [cpu, cpu]\n", [], ExitCode.CONFIG, "gpux.yml:6:13: build.fallback: lists 'cpu' twice"),
        ("  fallback: [openvino]\n", [], ExitCode.CONFIG,
         "gpux.yml:6:14: fallback 'openvino' is also the bundle's primary target"),
        ("  fallback: [web]\n", [], ExitCode.CONFIG, "gpux.yml:6:13: build.fallback: web cannot be a fallback"),
        ("", ["--fallback", "cpux"], ExitCode.TARGET_UNAVAILABLE, "--fallback: unknown fallback target 'cpux'"),
        ("", ["--fallback", "cpu", "--fallback", "cpu"], ExitCode.CONFIG, "--fallback: lists 'cpu' twice"),
        ("", ["--fallback", "openvino"], ExitCode.CONFIG, "--fallback: fallback 'openvino' is also the bundle's"),
        ("", ["--fallback", "web"], ExitCode.CONFIG, "--fallback: web cannot be a fallback"),
        ("", ["-t", "web", "--fallback", "cpu"], ExitCode.CONFIG, "--fallback: target 'web' cannot have fallbacks"),
    ],
)  # fmt: skip
def test_fallback_config_errors_are_one_line_with_their_exit_code(
    tmp_path: Path, yml: str, cli: list[str], code: ExitCode, message: str
) -> None:
    project = write_project(tmp_path / "p", models.mlp(), f"build:\n  targets: [openvino]\n{yml}")
    result = gpuxc("compile", project, *cli, "-o", tmp_path / "dist", "--no-cache")
    assert result.exit_code == code, result.stderr
    [line] = result.stderr.strip().splitlines()[-1:]
    assert message in line and "Traceback" not in result.stderr
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_the_cache_key_covers_the_fallbacks(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", models.mlp())
    plain = warm.build_key(warm.load_build_config(project, None, None, None), "openvino", False)
    with_cpu = warm.build_key(warm.load_build_config(project, None, None, None, ["cpu"]), "openvino", False)
    with_cuda = warm.build_key(warm.load_build_config(project, None, None, None, ["cuda", "cpu"]), "openvino", False)
    assert plain and with_cpu and with_cuda
    assert len({plain.key, with_cpu.key, with_cuda.key}) == 3


def test_a_cached_fallback_bundle_is_restored_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUXC_NO_CACHE", raising=False)  # tests/conftest.py turns the cache off
    project = write_project(tmp_path / "p", models.mlp())
    args = ("compile", project, "-t", "openvino", "--fallback", "cpu", "--cache-dir", tmp_path / "cache")
    first = gpuxc(*args, "-o", tmp_path / "a")
    second = gpuxc(*args, "-o", tmp_path / "b")
    assert first.exit_code == 0 and second.exit_code == 0 and "cache hit" in second.stderr
    a, b = tmp_path / "a" / "fb-1.0.0-openvino", tmp_path / "b" / "fb-1.0.0-openvino"
    assert manifest_of(a)["variants"] == manifest_of(b)["variants"]
    assert (a / "variants" / "cpu" / "model.onnx").read_bytes() == (b / "variants" / "cpu" / "model.onnx").read_bytes()


def test_a_fallback_failing_verification_fails_the_compile_and_keeps_the_good_bundle(tmp_path: Path) -> None:
    """coreml cannot run here (unverified, never failing); the cpu fallback at fp16 cannot meet an
    exact tolerance even after precision repair, so the compile fails naming the fallback."""
    exact = "build:\n  tolerance:\n    atol: 0\n    rtol: 0\n"
    project = write_project(tmp_path / "p", models.tiny_cnn(), exact)
    dist = tmp_path / "dist"
    good = gpuxc("compile", project, "-t", "coreml", "--fallback", "cpu", "-o", dist, "--no-cache")
    assert good.exit_code == 0, good.stderr
    bundle = dist / "fb-1.0.0-coreml"
    before = (bundle / "gpux-bundle.json").read_bytes()
    bad = gpuxc("compile", project, "-t", "coreml", "--fallback", "cpu", "--precision", "fp16", "-o", dist,
                "--no-cache")  # fmt: skip
    assert bad.exit_code == ExitCode.VERIFICATION_FAILED
    assert bad.stderr.strip().splitlines()[-1].startswith("error: fallback [cpu] fp16 output differs")
    assert (bundle / "gpux-bundle.json").read_bytes() == before
    assert sorted(p.name for p in dist.iterdir()) == ["fb-1.0.0-coreml"]  # no staging folder left behind


def test_an_unavailable_fallback_target_is_target_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if openvino were not installed
    project = write_project(tmp_path / "p", models.mlp())
    with pytest.raises(TargetUnavailable, match="^fallback target 'openvino' is not available here: openvino is not"):
        compile_project(project, ["cpu"], tmp_path / "dist", fallback=["openvino"], use_cache=False)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_a_tensorrt_fallback_brings_the_builder_its_adapter_imports(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", models.mlp())
    [result] = compile_project(project, ["openvino"], tmp_path / "dist", fallback=["tensorrt"], use_cache=False)
    m = manifest_of(result.path)
    trt = m["variants"][1]
    assert (trt["target"], trt["module"]) == ("tensorrt", "runtime_tensorrt")
    assert trt["verification"]["status"] == "unverified" and trt["artifact"]["entry"] == "variants/tensorrt/model.onnx"
    assert "from runner import trt_builder" in (result.path / "runner" / "runtime_tensorrt.py").read_text()
    assert {"runner/trt_builder.py", "variants/tensorrt/model.onnx"} <= {f["path"] for f in m["files"]}


def test_fallback_runner_modules_are_identifiers_and_never_shared(tmp_path: Path) -> None:
    assert variant_module("cpu") == "runtime_cpu" and variant_module("my-gpu") == "runtime_my_gpu"
    project = write_project(tmp_path / "p", models.mlp(), "build:\n  fallback: [my-gpu, my_gpu]\n")
    config = warm.load_build_config(project, None, None, None)
    with pytest.raises(ConfigError, match=r"gpux.yml:5:\d+: fallback 'my_gpu' would share its runner module"):
        check_fallback_targets(config, ["cpu"], {"cpu": None, "my-gpu": None, "my_gpu": None}, False)
