"""Every fixture model, and one real model, compiles to a verified cpu bundle that agrees with
ONNX Runtime on the source model."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from fixtures import models
from gpuxc.build.pipeline import BundleResult, compile_project
from tests.integration.conftest import load_npz, ort_run, run_cmd, write_project

NCHWC_DOMAIN = "com.microsoft.nchwc"

BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": models.mlp,
    "tiny_cnn": models.tiny_cnn,
    "tiny_cnn_dynamic": lambda: models.tiny_cnn(dynamic_spatial=True),
    "int64_text_model": models.int64_text_model,
    "multi_io": models.multi_io,
    "scalar_input": models.scalar_input,
    "with_if": models.with_if,
    "constant_weights": models.constant_weights,
    "ml_domain": models.ml_domain,
    "legacy_initializer_inputs": models.legacy_initializer_inputs,
    "mlp_opset13": lambda: models.mlp(opset=13),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, BundleResult]]:
    """Each builder's project and bundle, compiled once for this module's tests."""
    out: dict[str, tuple[Path, BundleResult]] = {}
    root = tmp_path_factory.mktemp("models")
    for key, build in BUILDERS.items():
        project = write_project(root / key, build(), name=key.replace("_", "-"))
        [result] = compile_project(project, ["cpu"], root / "dist")
        out[key] = (project, result)
    return out


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))


def _domains(graph: onnx.GraphProto) -> set[str]:
    found = set()
    for node in graph.node:
        found.add(node.domain)
        for attr in node.attribute:
            for sub in (
                [attr.g, *attr.graphs] if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) else []
            ):
                found |= _domains(sub)
    return found


@pytest.mark.parametrize("key", list(BUILDERS))
def test_fixture_model_compiles_and_verifies(compiled: dict[str, tuple[Path, BundleResult]], key: str) -> None:
    project, result = compiled[key]
    assert result.target == "cpu"
    assert result.verification["status"] == "passed", result.verification
    assert result.path.name == f"{key.replace('_', '-')}-1.0.0-cpu"
    manifest = _manifest(result.path)
    assert manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["failures"] == []
    # The artifact really runs and reproduces the recorded reference outputs.
    actual = ort_run(result.path / manifest["artifact"]["entry"], load_npz(result.path / "reference/inputs.npz"))
    expected = load_npz(result.path / "reference/outputs.npz")
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("key", list(BUILDERS))
def test_reference_outputs_equal_onnxruntime_on_source(
    compiled: dict[str, tuple[Path, BundleResult]], key: str
) -> None:
    project, result = compiled[key]
    inputs = load_npz(result.path / "reference/inputs.npz")
    expected = ort_run(project / "model.onnx", inputs)
    recorded = load_npz(result.path / "reference/outputs.npz")
    assert sorted(recorded) == sorted(expected)
    for name, value in expected.items():
        assert recorded[name].dtype == value.dtype, name
        np.testing.assert_array_equal(recorded[name], value, err_msg=name)


@pytest.mark.parametrize("key", list(BUILDERS))
def test_manifest_lists_every_file_with_sha256_and_size(
    compiled: dict[str, tuple[Path, BundleResult]], key: str
) -> None:
    _, result = compiled[key]
    manifest = _manifest(result.path)
    on_disk = sorted(
        p.relative_to(result.path).as_posix()
        for p in result.path.rglob("*")
        if p.is_file() and p.name != "gpux-bundle.json"
    )
    listed = sorted(entry["path"] for entry in manifest["files"])
    assert listed == on_disk
    for required in (
        "model/model.onnx",
        "reference/inputs.npz",
        "reference/outputs.npz",
        "runner/api.py",
        "runner/runtime.py",
        "runner/server.py",
        "__main__.py",
        "requirements.txt",
    ):
        assert required in listed
    for entry in manifest["files"]:
        data = (result.path / entry["path"]).read_bytes()
        assert entry["size"] == len(data), entry["path"]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry["path"]


@pytest.mark.parametrize("key", list(BUILDERS))
def test_passes_provenance_records_ort_optimize(compiled: dict[str, tuple[Path, BundleResult]], key: str) -> None:
    _, result = compiled[key]
    passes = _manifest(result.path)["build"]["passes"]
    [record] = [p for p in passes if p["name"] == "ort-optimize"]
    assert record["params"]["level"] == "extended"
    assert isinstance(record["seconds"], (int, float)) and record["seconds"] >= 0
    assert record["stats"]["level"] == "extended"


@pytest.mark.parametrize("key", list(BUILDERS))
def test_model_artifact_is_portable(compiled: dict[str, tuple[Path, BundleResult]], key: str) -> None:
    _, result = compiled[key]
    artifact = onnx.load(str(result.path / "model/model.onnx"))
    assert NCHWC_DOMAIN not in _domains(artifact.graph)
    # (ONNX Runtime lists every domain it knows in opset_import; only nodes make a model
    # host-specific.)
    assert _manifest(result.path)["artifact"]["settings"]["host_specific"] is False


def test_legacy_initializer_inputs_are_not_bundle_inputs(
    compiled: dict[str, tuple[Path, BundleResult]],
) -> None:
    _, result = compiled["legacy_initializer_inputs"]
    manifest = _manifest(result.path)
    assert [t["name"] for t in manifest["inputs"]] == ["x"]
    assert sorted(load_npz(result.path / "reference/inputs.npz")) == ["x"]


# -- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def magika_bundle(magika_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source model, bundle) for Magika, compiled through the CLI in a subprocess."""
    root = tmp_path_factory.mktemp("magika")
    project = write_project(root / "project", onnx.load(str(magika_model)), name="magika")
    proc = run_cmd(
        [
            sys.executable,
            "-m",
            "gpuxc",
            "compile",
            project,
            "-t",
            "cpu",
            "-o",
            root / "dist",
            "--json",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    [bundle] = json.loads(proc.stdout)["bundles"]
    assert bundle["verification"]["status"] == "passed", bundle
    return project / "model.onnx", Path(bundle["path"])


@pytest.mark.network
def test_magika_compiles_and_verifies(magika_bundle: tuple[Path, Path]) -> None:
    source, bundle = magika_bundle
    proc = run_cmd([sys.executable, bundle, "verify"], cwd=bundle.parent)
    assert proc.returncode == 0, proc.stderr
    assert "verification passed" in proc.stdout
    manifest = _manifest(bundle)
    assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert [(t["name"], t["dtype"]) for t in manifest["inputs"]] == [("bytes", "int32")]
    assert manifest["signature"]["opsets"].get("ai.onnx.ml") is not None


@pytest.mark.network
def test_magika_run_npz_matches_onnxruntime(magika_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    source, bundle = magika_bundle
    rng = np.random.default_rng(7)
    # Real Magika inputs: byte values 0..255 plus 256 as padding, a batch of 2.
    inputs = {"bytes": rng.integers(0, 257, size=(2, 2048), dtype=np.int32)}
    np.savez(tmp_path / "in.npz", **inputs)
    proc = run_cmd([sys.executable, bundle, "run", "--input", tmp_path / "in.npz"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    expected = ort_run(source, inputs)
    assert sorted(got) == sorted(expected) == ["target_label"]
    value = np.asarray(got["target_label"], dtype=np.float32)
    assert value.shape == (2, 214)
    np.testing.assert_allclose(value, expected["target_label"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(value.argmax(-1), expected["target_label"].argmax(-1))


@pytest.mark.parametrize("key", list(BUILDERS))
def test_bundle_run_reproduces_reference_outputs_through_json(
    compiled: dict[str, tuple[Path, BundleResult]], key: str, tmp_path: Path
) -> None:
    """Every model's inputs (int32/int64, bool, scalars, several inputs) survive the runner's JSON
    path and give the reference outputs back with their dtypes."""
    _, result = compiled[key]
    inputs = load_npz(result.path / "reference/inputs.npz")
    (tmp_path / "in.json").write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    proc = run_cmd([sys.executable, result.path, "run", "--input", "@in.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    expected = load_npz(result.path / "reference/outputs.npz")
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        actual = np.asarray(got[name], dtype=value.dtype)
        assert actual.shape == value.shape, name
        np.testing.assert_allclose(actual, value, rtol=1e-4, atol=1e-5, err_msg=name)
