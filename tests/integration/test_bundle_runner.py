"""The generated runner of a bundle: its Python API (``import runner``) and ``python <bundle> ...``,
always in a child process started from another working directory."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import (
    SHARED_LABELS,
    assert_one_error_line,
    endless_loop_model,
    load_npz,
    ort_run,
    resign,
    run_cmd,
    write_project,
)

EXIT_OK, EXIT_VERIFY, EXIT_INPUT, EXIT_BUNDLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4
BENCH_KEYS = {"avg_time_ms", "min_time_ms", "max_time_ms", "p50_time_ms", "p95_time_ms", "fps"}


def _image(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _bundle(bundle: Path, *args: str | Path, cwd: Path) -> Any:
    return run_cmd([sys.executable, bundle, *args], cwd=cwd)


# -- the Python API --------------------------------------------------------------------------------

API_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    bundle, image_npz, out = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, bundle)
    import runner
    rt = runner.load()
    image = np.load(image_npz)["image"]
    outputs = rt.infer({"image": image})
    listed = rt.infer({"image": image.tolist()})   # nested lists are accepted too
    bare = rt.infer(image)                         # a single-input model takes a bare array
    stats = rt.benchmark(num_runs=5, warmup_runs=1)
    result = {
        "runner_file": runner.__file__,
        "target": runner.TARGET,
        "outputs": {k: v.tolist() for k, v in outputs.items()},
        "dtypes": {k: str(v.dtype) for k, v in outputs.items()},
        "listed_equal": bool(all(np.array_equal(listed[k], outputs[k]) for k in outputs)),
        "bare_equal": bool(all(np.array_equal(bare[k], outputs[k]) for k in outputs)),
        "benchmark": stats,
        "model_info": rt.get_model_info(),
        "provider_info": rt.get_provider_info(),
        "available_providers": rt.get_available_providers(),
        "verify": rt.verify()["status"],
        "integrity": rt.check_integrity(),
    }
    try:
        rt.infer({"nope": image})
    except runner.InputError as exc:
        result["unknown_input_error"] = str(exc)
    rt.cleanup()
    try:
        rt.infer({"image": image})
        result["after_cleanup"] = "ran"
    except RuntimeError as exc:
        result["after_cleanup"] = str(exc)
    with open(out, "w") as fh:
        json.dump(result, fh)
    """
)


@pytest.fixture(scope="module")
def api_result(shared_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Everything the API returned, from one child process whose cwd is not the bundle."""
    work = tmp_path_factory.mktemp("api-cwd")
    np.savez(work / "image.npz", image=_image())
    (work / "api.py").write_text(API_SCRIPT, encoding="utf-8")
    proc = run_cmd(
        [sys.executable, work / "api.py", shared_bundle, work / "image.npz", work / "out.json"],
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((work / "out.json").read_text(encoding="utf-8"))


def test_import_runner_from_another_cwd(api_result: dict[str, Any], shared_bundle: Path) -> None:
    assert Path(api_result["runner_file"]).resolve().parent == (shared_bundle / "runner").resolve()
    assert api_result["target"] == "cpu"


def test_infer_matches_onnxruntime_on_source(api_result: dict[str, Any], shared_project: Path) -> None:
    expected = ort_run(shared_project / "model.onnx", {"image": _image()})
    assert api_result["dtypes"] == {"logits": "float32"}
    np.testing.assert_allclose(
        np.asarray(api_result["outputs"]["logits"], np.float32),
        expected["logits"],
        rtol=1e-4,
        atol=1e-5,
    )
    assert api_result["listed_equal"] is True
    assert api_result["bare_equal"] is True


def test_benchmark_keys(api_result: dict[str, Any]) -> None:
    stats = api_result["benchmark"]
    assert BENCH_KEYS <= set(stats)
    assert stats["num_runs"] == 5
    assert 0 < stats["min_time_ms"] <= stats["p50_time_ms"] <= stats["max_time_ms"]
    assert stats["min_time_ms"] <= stats["avg_time_ms"] <= stats["max_time_ms"]
    assert stats["fps"] == pytest.approx(1000.0 / stats["avg_time_ms"])


def test_get_model_info(api_result: dict[str, Any], shared_bundle: Path) -> None:
    info = api_result["model_info"]
    manifest = json.loads((shared_bundle / "gpux-bundle.json").read_text(encoding="utf-8"))
    assert (info["name"], info["version"], info["target"]) == ("shared-cnn", "2.0.0", "cpu")
    assert [(t["name"], t["type"], t["shape"]) for t in info["inputs"]] == [("image", "float32", ["N", 3, 32, 32])]
    assert info["outputs"][0]["labels"] == SHARED_LABELS
    assert info["source_sha256"] == manifest["source"]["sha256"]
    assert info["verification"]["status"] == "passed"


def test_provider_info_and_available_providers(api_result: dict[str, Any]) -> None:
    provider = api_result["provider_info"]
    assert provider["name"] == "CPUExecutionProvider"
    assert provider["verified_at_build"] is True
    assert provider["runtime"].startswith("onnxruntime ")
    assert "CPUExecutionProvider" in api_result["available_providers"]


def test_verify_and_integrity_from_python(api_result: dict[str, Any]) -> None:
    assert api_result["verify"] == "passed"
    assert api_result["integrity"] == []


def test_unknown_input_is_an_input_error(api_result: dict[str, Any]) -> None:
    assert "unknown input 'nope'" in api_result["unknown_input_error"]


def test_cleanup_releases_the_session(api_result: dict[str, Any]) -> None:
    assert "cleaned up" in api_result["after_cleanup"]


# -- python <bundle> run ---------------------------------------------------------------------------


@pytest.fixture
def expected_logits(shared_project: Path) -> np.ndarray:
    return ort_run(shared_project / "model.onnx", {"image": _image()})["logits"]


def _logits(text: str) -> np.ndarray:
    data = json.loads(text)
    assert list(data) == ["logits", "ranked"]  # the labelled output's ranking beside it (tests/runner/test_labels.py)
    return np.asarray(data["logits"], dtype=np.float32)


def test_run_inline_json(shared_bundle: Path, tmp_path: Path, expected_logits: np.ndarray) -> None:
    proc = _bundle(shared_bundle, "run", "--input", json.dumps({"image": _image().tolist()}), cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    np.testing.assert_allclose(_logits(proc.stdout), expected_logits, rtol=1e-4, atol=1e-5)


def test_run_at_file_json(shared_bundle: Path, tmp_path: Path, expected_logits: np.ndarray) -> None:
    (tmp_path / "in.json").write_text(json.dumps({"image": _image().tolist()}), encoding="utf-8")
    proc = _bundle(shared_bundle, "run", "--input", "@in.json", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    np.testing.assert_allclose(_logits(proc.stdout), expected_logits, rtol=1e-4, atol=1e-5)


def test_run_npz_input(shared_bundle: Path, tmp_path: Path, expected_logits: np.ndarray) -> None:
    np.savez(tmp_path / "in.npz", image=_image())
    proc = _bundle(shared_bundle, "run", "--input", "in.npz", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    np.testing.assert_allclose(_logits(proc.stdout), expected_logits, rtol=1e-4, atol=1e-5)


def test_run_output_json_file(shared_bundle: Path, tmp_path: Path, expected_logits: np.ndarray) -> None:
    np.savez(tmp_path / "in.npz", image=_image())
    proc = _bundle(shared_bundle, "run", "--input", "in.npz", "--output", "out.json", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout == ""
    np.testing.assert_allclose(
        _logits((tmp_path / "out.json").read_text(encoding="utf-8")),
        expected_logits,
        rtol=1e-4,
        atol=1e-5,
    )


def test_run_output_npz_file(shared_bundle: Path, tmp_path: Path, expected_logits: np.ndarray) -> None:
    np.savez(tmp_path / "in.npz", image=_image())
    proc = _bundle(shared_bundle, "run", "--input", "in.npz", "--output", "out.npz", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    out = load_npz(tmp_path / "out.npz")
    assert list(out) == ["logits"]
    assert out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], expected_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('{"image": [1, 2', "not valid JSON"),
        ("@missing.json", "input file not found"),
        ('{"nope": [1.0]}', "unknown input 'nope'"),
        ('{"image": [[1.0, 2.0]]}', "expected rank 4"),
        ('{"image": [[[["a"]]]]}', "image"),
    ],
    ids=["invalid-json", "missing-file", "unknown-name", "wrong-rank", "wrong-dtype"],
)
def test_run_bad_input_exits_2_with_one_line(shared_bundle: Path, tmp_path: Path, spec: str, message: str) -> None:
    proc = _bundle(shared_bundle, "run", "--input", spec, cwd=tmp_path)
    assert proc.returncode == EXIT_INPUT, (proc.stdout, proc.stderr)
    assert_one_error_line(proc.stderr, contains=[message])
    assert proc.stdout == ""


def test_info_prints_model_info(shared_bundle: Path, tmp_path: Path) -> None:
    proc = _bundle(shared_bundle, "info", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    info = json.loads(proc.stdout)
    assert info["name"] == "shared-cnn" and info["target"] == "cpu"


def test_bench_json(shared_bundle: Path, tmp_path: Path) -> None:
    proc = _bundle(shared_bundle, "bench", "--runs", "5", "--warmup", "1", "--json", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    stats = json.loads(proc.stdout)
    assert BENCH_KEYS <= set(stats)
    assert stats["num_runs"] == 5 and stats["warmup_runs"] == 1


# -- python <bundle> verify ------------------------------------------------------------------------


def test_verify_passes(shared_bundle: Path, tmp_path: Path) -> None:
    proc = _bundle(shared_bundle, "verify", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "verification passed on CPUExecutionProvider" in proc.stdout
    report = json.loads(_bundle(shared_bundle, "verify", "--json", cwd=tmp_path).stdout)
    assert report["status"] == "passed"
    assert report["outputs"]["logits"]["mismatches"] == 0


def test_verify_exits_1_when_reference_outputs_disagree(bundle_copy: Path, tmp_path: Path) -> None:
    ref = bundle_copy / "reference" / "outputs.npz"
    outputs = load_npz(ref)
    np.savez(ref, **{k: v + np.float32(0.5) for k, v in outputs.items()})
    resign(bundle_copy, "reference/outputs.npz")  # integrity passes: only the numbers disagree
    proc = _bundle(bundle_copy, "verify", cwd=tmp_path)
    assert proc.returncode == EXIT_VERIFY, (proc.stdout, proc.stderr)
    assert "verification failed" in proc.stdout
    assert "logits" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_verify_exits_3_when_reference_outputs_are_tampered(bundle_copy: Path, tmp_path: Path) -> None:
    ref = bundle_copy / "reference" / "outputs.npz"
    outputs = load_npz(ref)
    np.savez(ref, **{k: v + np.float32(0.5) for k, v in outputs.items()})
    proc = _bundle(bundle_copy, "verify", cwd=tmp_path)
    assert proc.returncode == EXIT_BUNDLE, (proc.stdout, proc.stderr)
    assert_one_error_line(proc.stderr, contains=["integrity", "reference/outputs.npz"])


def test_verify_exits_3_when_the_model_is_modified(bundle_copy: Path, tmp_path: Path) -> None:
    model_path = bundle_copy / "model" / "model.onnx"
    model = onnx.load(str(model_path))
    model.producer_version = "tampered"  # still a valid model that would load and run
    onnx.save(model, str(model_path))
    proc = _bundle(bundle_copy, "verify", cwd=tmp_path)
    assert proc.returncode == EXIT_BUNDLE, (proc.stdout, proc.stderr)
    assert_one_error_line(proc.stderr, contains=["integrity", "model/model.onnx"])


def test_missing_model_file_is_a_bundle_error(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "model" / "model.onnx").unlink()
    proc = _bundle(bundle_copy, "run", "--input", "{}", cwd=tmp_path)
    assert proc.returncode == EXIT_BUNDLE, (proc.stdout, proc.stderr)
    assert_one_error_line(proc.stderr, contains=["integrity check failed", "model/model.onnx: missing"])


# -- runtime.timeout -------------------------------------------------------------------------------


def test_runtime_timeout_stops_inference_with_exit_4(tmp_path: Path) -> None:
    # The reference inputs are small (generated int64 values are < 4 steps), so compiling is quick;
    # the run below asks for 2**62 iterations, which only the timeout can end.
    project = write_project(tmp_path / "p", endless_loop_model(), {"runtime": {"timeout": 0.5}}, name="endless")
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    small = _bundle(result.path, "run", "--input", json.dumps({"steps": 3, "x": [0, 0, 0, 0]}), cwd=tmp_path)
    assert small.returncode == EXIT_OK, small.stderr
    assert json.loads(small.stdout) == {"y": [3.0, 3.0, 3.0, 3.0]}
    endless = _bundle(result.path, "run", "--input", json.dumps({"steps": 2**62, "x": [0, 0, 0, 0]}), cwd=tmp_path)
    assert endless.returncode == EXIT_TIMEOUT, (endless.stdout, endless.stderr)
    assert endless.stdout == ""
    assert "Traceback" not in endless.stderr
    assert endless.stderr.strip().splitlines()[-1] == "error: inference exceeded the 0.5s timeout"
