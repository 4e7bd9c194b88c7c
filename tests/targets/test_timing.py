"""Compile-time timing goes through the bundle's own adapter with the artifact's settings
(gpuxc/targets/timing.py), and the runtime settings auto chooses are recorded and applied."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpuxc_cpu.target import CpuTarget

from fixtures import has_module, models
from gpuxc.build import search
from gpuxc.build.pipeline import compile_project
from gpuxc.build.policy import load_policy
from gpuxc.targets import Artifact
from gpuxc.targets.timing import adapter_module, open_adapter
from tests.integration.conftest import write_project


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("timing")
    [result] = compile_project(write_project(root / "p", models.mlp(batch=1), name="mlp"), ["cpu"], root / "dist")
    return result.path


def test_the_adapter_is_the_runner_file_gpuxc_ships() -> None:
    module = adapter_module("onnxruntime/runtime.py")
    assert Path(module.__file__ or "").parts[-2:] == ("onnxruntime", "runtime.py")
    assert module.__name__.startswith("_gpuxc_adapter_") and hasattr(module, "_WATCHDOG")


def test_the_cpu_timer_runs_the_adapter_as_the_runner_does(cpu_bundle: Path) -> None:
    fn = CpuTarget().timer(cpu_bundle, Artifact("model/model.onnx", "onnx", settings={}))
    out = fn({"x": np.ones((1, 8), np.float32)})
    assert set(out) == {"probs"}  # the adapter's dict by output name, not a bare session's list


def test_the_artifact_settings_reach_the_session(cpu_bundle: Path) -> None:
    settings = {"intra_op_threads": 1, "allow_spinning": False, "execution_mode": "parallel", "enable_profiling": True}
    adapter = open_adapter("onnxruntime/runtime.py", cpu_bundle / "model/model.onnx", settings, "cpu")
    options = adapter.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert str(options.execution_mode).endswith("ORT_PARALLEL")
    assert options.enable_profiling is False  # never while timing


def test_cpu_tuning_candidates_leave_a_users_thread_count_alone() -> None:
    target = CpuTarget()
    found = target.tuning_candidates(Artifact("m", "onnx", settings={"intra_op_threads": 0,
                                                                     "execution_mode": "sequential"}))  # fmt: skip
    assert {"allow_spinning": False} in found and {"execution_mode": "parallel"} in found
    user = target.tuning_candidates(Artifact("m", "onnx", settings={"intra_op_threads": 4,
                                                                    "execution_mode": "parallel"}))  # fmt: skip
    assert user == []


def test_openvino_timing_writes_no_cache_into_the_candidate(tmp_path: Path) -> None:
    if not has_module("openvino"):
        pytest.skip("openvino is not installed")
    from gpuxc_openvino.target import OpenVinoTarget

    project = write_project(tmp_path / "p", models.mlp(batch=1), name="mlp")
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    settings = {"cache_dir": "ovcache", "inference_precision": "f32"}
    artifact = Artifact("model/model.xml", "openvino-ir", settings=settings)
    fn = OpenVinoTarget().timer(result.path, artifact)
    assert set(fn({"x": np.ones((1, 8), np.float32)})) == {"probs"}
    assert not (result.path / "ovcache").exists()
    assert OpenVinoTarget().tuning_candidates(Artifact("m", "x", settings={"intra_op_threads": 2})) == []


RUNNER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import runner
    rt = runner.load()
    a = rt._adapter
    if hasattr(a, "session"):
        print(json.dumps({"threads": a.session.get_session_options().intra_op_num_threads}))
    else:
        print(json.dumps({"threads": a.compiled.get_property("INFERENCE_NUM_THREADS")}))
    """
)


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_auto_records_the_faster_settings_and_the_runner_applies_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    if target == "openvino" and not has_module("openvino"):
        pytest.skip("openvino is not installed")
    monkeypatch.setattr("gpuxc.host.physical_cores", lambda: 8)  # so the one-thread trial is offered here too
    # The choice is given (which setting is faster is this host's business); the recording is tested.
    timed: list[list[str]] = []

    def measured(fns: dict[str, Any], feeds: Any) -> dict[str, float]:
        timed.append(list(fns))
        return {name: (0.5 if name.startswith("intra_op_threads=1") else 1.0) for name in fns}

    monkeypatch.setattr(search, "interleaved_ms", measured)
    project = write_project(tmp_path / "p", models.mlp(batch=1), {"build": {"optimize": "auto"}}, name="mlp")
    messages: list[str] = []
    [result] = compile_project(project, [target], tmp_path / "dist", progress=messages.append, use_cache=False)
    settings = json.loads((result.path / "gpux-bundle.json").read_text())["artifact"]["settings"]
    assert settings["intra_op_threads"] == 1
    assert any("tuning runtime settings" in m for m in messages)
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(result.path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"threads": 1}
    if target == "cpu":  # a policy replays the tuned settings without timing (docs/policy.md)
        manifest = json.loads((result.path / "gpux-bundle.json").read_text())
        assert manifest["build"]["variant_settings"]["runtime"] == {"intra_op_threads": 1}
        policy = tmp_path / "policy.yml"
        done = subprocess.run([sys.executable, "-m", "gpuxc", "policy", "export", str(result.path), "-o", str(policy)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        timed.clear()
        [again] = compile_project(project, ["cpu"], tmp_path / "replay", use_cache=False, policy=load_policy(policy))
        replayed = json.loads((again.path / "gpux-bundle.json").read_text())["artifact"]["settings"]
        assert replayed["intra_op_threads"] == 1 and timed == []


def test_a_reproducible_build_does_not_tune(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", models.mlp(batch=1), {"build": {"optimize": "auto"}}, name="mlp")
    messages: list[str] = []
    compile_project(project, ["cpu"], tmp_path / "dist", progress=messages.append, archive=True, use_cache=False)
    assert not any("tuning runtime settings" in m for m in messages)
    assert any("timing" in m for m in messages)  # the search itself still ran
