"""The adapters' cheap run paths keep the timeout: ONNX Runtime reuses a RunOptions per thread but never
one a watchdog terminated; OpenVINO runs bounded graphs inline, keeps the abandonable async run for
graphs with a Loop, and lends concurrent calls infer requests from a pool. Each case runs the bundle's
own runner in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures import has_module, models
from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import endless_loop_model, write_project

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import runner
    rt = runner.load()
    out = {"bounded": getattr(rt._adapter, "bounded", None)}
    if "steps" in rt.inputs:
        x = np.zeros(4, np.float32)
        try:
            rt.infer({"steps": np.array(2**31 - 1, np.int64), "x": x})
            out["long"] = "finished"
        except runner.InferenceTimeout as exc:
            out["long"] = str(exc)
        if sys.argv[2] == "again":
            try:
                out["after"] = rt.infer({"steps": np.array(3, np.int64), "x": x})["y"].tolist()
            except Exception as exc:
                out["after"] = f"{type(exc).__name__}: {exc}"
    elif sys.argv[2] == "threads":
        import threading
        feeds = rt.reference_inputs()
        errors = []
        def work():
            for _ in range(50):
                try:
                    rt.infer(feeds)
                except Exception as exc:
                    errors.append(str(exc))
        threads = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        out["errors"] = errors[:3]
    else:
        feeds = rt.reference_inputs()
        first = rt.infer(feeds)
        again = rt.infer(feeds)
        ref = rt.reference_outputs()
        out["close"] = all(np.allclose(first[k], ref[k], atol=1e-4) for k in ref)
        out["copies"] = all(first[k] is not again[k] for k in first)
    print(json.dumps(out))
    sys.stdout.flush()
    import os
    os._exit(0)  # an abandoned OpenVINO run may still be going: do not wait for it
    """
)



def _run(bundle: Path, mode: str = "once") -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle), mode], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def endless(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("endless")
    project = write_project(root / "p", endless_loop_model(), {"runtime": {"timeout": 0.5}}, name="endless")
    targets = ["cpu"] + (["openvino"] if has_module("openvino") else [])
    return {r.target: r.path for r in compile_project(project, targets, root / "dist")}


def test_onnxruntime_runs_again_after_a_timeout_on_the_same_thread(endless: dict[str, Path]) -> None:
    out = _run(endless["cpu"], "again")
    assert out["long"] == "inference exceeded the 0.5s timeout"
    assert out["after"] == [3.0, 3.0, 3.0, 3.0]  # a reused, terminated RunOptions would stop it at once


def test_openvino_keeps_the_timeout_for_a_loop(endless: dict[str, Path]) -> None:
    if "openvino" not in endless:
        pytest.skip("openvino is not installed")
    out = _run(endless["openvino"], "again")
    assert out["bounded"] is False
    assert out["long"] == "inference exceeded the 0.5s timeout"
    # OpenVINO cannot stop the abandoned run: the next call waits its own timeout for it, then says so
    # (before, the busy request answered "Infer Request is busy": a 500 from the server).
    assert out["after"] == ("InferenceTimeout: inference exceeded the 0.5s timeout "
                            "(an earlier run that did is still going)")  # fmt: skip


def test_openvino_runs_a_bounded_graph_inline(tmp_path: Path) -> None:
    if not has_module("openvino"):
        pytest.skip("openvino is not installed")
    project = write_project(tmp_path / "p", models.mlp(batch=1), name="mlp")
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    out = _run(result.path)
    assert out == {"bounded": True, "close": True, "copies": True}


def test_openvino_serves_concurrent_calls(tmp_path: Path) -> None:
    # The server calls infer from a thread pool; one shared infer request would answer "busy".
    if not has_module("openvino"):
        pytest.skip("openvino is not installed")
    project = write_project(tmp_path / "p", models.mlp(batch=1), name="mlp")
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    assert _run(result.path, "threads") == {"bounded": True, "errors": []}
