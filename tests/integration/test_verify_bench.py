"""gpuxc verify --against, gpuxc bench [--compare], and the memory budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import ExitCode, MemoryBudgetExceeded


def gpuxc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuxc", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vb")
    project = root / "proj"
    project.mkdir()
    onnx.save(models.tiny_cnn(), project / "model.onnx")
    (project / "gpux.yml").write_text("name: vb\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    [result] = compile_project(project, ["cpu"], root / "dist")
    return result.path, project / "model.onnx"


def test_verify_against_the_source_model_passes_on_fresh_inputs(cnn_bundle: tuple[Path, Path]) -> None:
    bundle, model = cnn_bundle
    done = gpuxc("verify", str(bundle), "--against", str(model), "--samples", "3", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "passed" and report["samples"] == 3
    assert report["outputs"]["logits"]["cosine"] > 0.9999


def test_verify_against_a_different_model_fails_naming_the_metric(
    cnn_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, model = cnn_bundle
    other = onnx.load(model)
    weight = other.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * -1.0, weight.name))
    onnx.save(other, tmp_path / "other.onnx")
    done = gpuxc("verify", str(bundle), "--against", str(tmp_path / "other.onnx"))
    assert done.returncode == ExitCode.VERIFICATION_FAILED
    assert "cosine" in done.stderr or "element(s)" in done.stderr
    assert "Traceback" not in done.stderr


def test_verify_against_with_supplied_inputs(cnn_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, model = cnn_bundle
    batch = np.random.default_rng(5).standard_normal((2, 1, 3, 32, 32)).astype(np.float32)  # 2 samples
    np.savez(tmp_path / "in.npz", image=batch)
    done = gpuxc("verify", str(bundle), "--against", str(model), "--inputs", str(tmp_path / "in.npz"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == 2


def test_verify_against_with_a_sample_axis_over_a_scalar_input(tmp_path: Path) -> None:
    # A scalar input stacked as [N] (silero-vad's `sr`): each sample is a 0-d array ONNX Runtime takes.
    project = tmp_path / "proj"
    project.mkdir()
    onnx.save(models.scalar_input(), project / "model.onnx")
    (project / "gpux.yml").write_text("name: sc\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    np.savez(tmp_path / "in.npz", scale=np.array([2.0, 3.0], np.float32), x=np.ones((2, 4), np.float32))
    done = gpuxc("verify", str(result.path), "--against", str(project / "model.onnx"), "--inputs",
                 str(tmp_path / "in.npz"), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == 2


def test_bench_reports_percentiles_throughput_and_peak_rss(cnn_bundle: tuple[Path, Path]) -> None:
    bundle, _ = cnn_bundle
    done = gpuxc("bench", str(bundle), "--runs", "20", "--warmup", "2", "--threads", "1", "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)["results"][str(bundle)]
    assert stats["p50_time_ms"] <= stats["p90_time_ms"] <= stats["p99_time_ms"]
    assert stats["fps"] > 0 and stats["peak_rss_mb"] > 0


def test_bench_compare_runs_the_raw_model_beside_the_bundle(cnn_bundle: tuple[Path, Path]) -> None:
    bundle, model = cnn_bundle
    done = gpuxc("bench", str(bundle), "--compare", str(model), "--runs", "10", "--warmup", "2", "--rounds", "2",
                 "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert set(results) == {"raw", str(bundle)}
    raw, ours = results["raw"], results[str(bundle)]
    assert raw["speedup_vs_raw"] == 1.0
    assert ours["speedup_vs_raw"] == pytest.approx(raw["p50_time_ms"] / ours["p50_time_ms"])


def test_bench_of_a_non_bundle_is_a_clear_error(tmp_path: Path) -> None:
    done = gpuxc("bench", str(tmp_path))
    assert done.returncode == ExitCode.BUNDLE
    assert done.stderr.strip().count("\n") == 0 and "not a gpuxc bundle" in done.stderr


def test_memory_budget_too_small_is_an_error_with_advice(make_project, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn(), {"runtime": {"gpu": {"memory": "2KB"}}})
    with pytest.raises(
        MemoryBudgetExceeded, match=r"gpux.yml:\d+:\d+: fp32 needs an estimated .* over the 2.0 KB budget"
    ):
        compile_project(project, ["cpu"], tmp_path / "dist")
    assert not (tmp_path / "dist" / "demo-1.0.0-cpu").exists()


def test_memory_estimate_is_recorded_when_within_budget(make_project, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn(), {"runtime": {"gpu": {"memory": "1GB"}}})
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    memory = json.loads((result.path / "gpux-bundle.json").read_text())["build"]["memory"]
    shipped = onnx.load(result.path / "model" / "model.onnx")
    assert memory["weights_bytes"] == sum(numpy_helper.to_array(t).nbytes for t in shipped.graph.initializer)
    assert memory["activations_bytes"] > 0
    assert memory["total_bytes"] == memory["weights_bytes"] + memory["activations_bytes"]
