"""directml and cuda: graph checks and CPU-numerics verification here; their runtimes on the device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import CompileError, ConfigError


def manifest_of(path: Path) -> dict:
    return json.loads((path / "gpux-bundle.json").read_text())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu")
    project = root / "proj"
    project.mkdir()
    onnx.save(models.tiny_cnn(), project / "model.onnx")  # Conv+BN+Relu: EXTENDED would write FusedConv
    (project / "gpux.yml").write_text("name: g\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    results = compile_project(project, ["directml", "cuda"], root / "dist")
    return {r.target: r.path for r in results}


@pytest.mark.parametrize("target", ["directml", "cuda"])
def test_bundle_holds_no_op_its_provider_cannot_run(bundles: dict[str, Path], target: str) -> None:
    model = onnx.load(bundles[target] / "model" / "model.onnx")
    domains = {n.domain for n in model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains  # BASIC only: no com.microsoft fused or NCHWc ops
    assert manifest_of(bundles[target])["build"]["passes"][-1]["params"]["level"] == "basic"


@pytest.mark.parametrize("target", ["directml", "cuda"])
def test_unverified_on_its_runtime_but_graph_numerics_checked(bundles: dict[str, Path], target: str) -> None:
    if target == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA GPU is present: this bundle is verified for real (see the gpu test)")
    verification = manifest_of(bundles[target])["verification"]
    assert verification["status"] == "unverified"
    assert "cannot run on this host" in verification["reason"]
    assert verification["outputs"]["logits"]["cosine"] > 0.9999  # the stand-in run's metrics are recorded
    assert "stand-in" in verification["runtime"]


def test_directml_session_settings_and_requirements(bundles: dict[str, Path]) -> None:
    manifest = manifest_of(bundles["directml"])
    settings = manifest["artifact"]["settings"]
    assert settings["disable_memory_pattern"] is True and settings["execution_mode"] == "sequential"
    reqs = (bundles["directml"] / "requirements.txt").read_text()
    assert "onnxruntime-directml==" in reqs and "sys_platform == 'win32'" in reqs
    assert manifest["runtime"]["providers"][0] == "DmlExecutionProvider"


def test_cuda_requirements_and_provider_options(bundles: dict[str, Path]) -> None:
    manifest = manifest_of(bundles["cuda"])
    assert "onnxruntime-gpu==" in (bundles["cuda"] / "requirements.txt").read_text()
    assert manifest["artifact"]["settings"]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert manifest["runtime"]["providers"][0] == "CUDAExecutionProvider"


@pytest.mark.parametrize("target", ["directml", "cuda"])
def test_bundle_verify_falls_back_to_cpu_here(bundles: dict[str, Path], target: str) -> None:
    done = subprocess.run([sys.executable, str(bundles[target]), "verify"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "CPUExecutionProvider" in done.stdout


@pytest.mark.parametrize("target", ["directml", "cuda"])
def test_extended_optimization_is_refused(make_project, tmp_path: Path, target: str) -> None:
    project = make_project(models.tiny_cnn(), {"build": {"optimization_level": "extended"}})
    with pytest.raises(ConfigError, match="basic"):
        compile_project(project, [target], tmp_path / "dist")


def test_directml_refuses_an_opset_outside_its_range(make_project, tmp_path: Path) -> None:
    project = make_project(models.mlp(opset=21))
    with pytest.raises(CompileError, match="opset 21 is outside"):
        compile_project(project, ["directml"], tmp_path / "dist")
    assert not (tmp_path / "dist" / "demo-1.0.0-directml").exists()


def test_real_model_from_a_wheel_passes_the_graph_checks(magika_model: Path, tmp_path: Path) -> None:
    project = tmp_path / "m"
    project.mkdir()
    (project / "model.onnx").write_bytes(magika_model.read_bytes())
    (project / "gpux.yml").write_text("name: m\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    for result in compile_project(project, ["directml", "cuda"], tmp_path / "dist"):
        assert result.verification["status"] in ("unverified", "passed")


@pytest.mark.gpu
def test_cuda_bundle_verifies_on_a_gpu(bundles: dict[str, Path]) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA GPU with onnxruntime-gpu on this host")
    done = subprocess.run([sys.executable, str(bundles["cuda"]), "verify", "--provider", "cuda"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "CUDAExecutionProvider" in done.stdout, done.stderr
