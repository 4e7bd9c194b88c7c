"""``bench --profile``: time per op type from the runtime's own profiler (templates/runner/profile.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import has_module, models
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle.runner_source import runner_module
from tests.integration.conftest import write_project


def test_op_table_sums_by_op_type_most_time_first() -> None:
    records = [("a", "MatMul", 2.0), ("b", "MatMul", 1.0), ("a", "MatMul", 2.0), ("r", "Relu", 1.0)]
    rows = runner_module("profile").op_table(records, runs=2)
    assert rows == [
        {"op_type": "MatMul", "nodes": 2, "total_ms": 5.0, "ms_per_run": 2.5, "share": 0.8333},
        {"op_type": "Relu", "nodes": 1, "total_ms": 1.0, "ms_per_run": 0.5, "share": 0.1667},
    ]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("profile")
    targets = ["cpu"] + (["openvino"] if has_module("openvino") else [])
    project = write_project(root / "p", models.outlier_mlp(), name="prof")
    return {r.target: r.path for r in compile_project(project, targets, root / "dist")}


@pytest.mark.parametrize(("target", "matmul"), [("cpu", "MatMul"), ("openvino", "FullyConnected")])
def test_bench_profile_reports_the_runtimes_own_op_times(bundles: dict[str, Path], target: str, matmul: str) -> None:
    if target not in bundles:
        pytest.skip("openvino is not installed")
    proc = subprocess.run([sys.executable, "-m", "gpuxc", "bench", str(bundles[target]), "--profile", "--runs", "10",
                           "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [stats] = json.loads(proc.stdout)["results"].values()
    by_op = {row["op_type"]: row for row in stats["profile"]}
    assert by_op[matmul]["nodes"] == 3 and by_op[matmul]["total_ms"] > 0  # mm1, mm2, mm3
    assert sum(row["share"] for row in stats["profile"]) == pytest.approx(1.0, abs=0.01)


def test_profile_needs_a_runtime_loaded_for_it(bundles: dict[str, Path]) -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import runner\n"
            "try:\n    runner.load().benchmark(2, 0, profile=True)\n"
            "except runner.InputError as e:\n    print(e)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(bundles["cpu"])], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.stdout.startswith("profiling needs a runtime loaded with enable_profiling=True"), proc.stderr


def test_profile_and_compare_do_not_mix(bundles: dict[str, Path], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gpuxc", "bench", str(bundles["cpu"]), "--profile", "--compare",
                           str(tmp_path / "model.onnx")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "--profile measures bundles on their own" in proc.stderr

