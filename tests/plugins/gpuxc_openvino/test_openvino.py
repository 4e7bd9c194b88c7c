"""The openvino target: IR, recorded inference precision, verification on the CPU plugin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import CompileError, ConfigError

pytest.importorskip("openvino", reason="the openvino target needs `pip install gpuxc[openvino]`")


def project_with(root: Path, model: onnx.ModelProto, name: str) -> Path:
    project = root / "proj"
    project.mkdir()
    onnx.save(model, project / "model.onnx")
    (project / "gpux.yml").write_text(f"name: {name}\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    return project


def manifest_of(path: Path) -> dict:
    return json.loads((path / "gpux-bundle.json").read_text())


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ov")
    project = root / "proj"
    project.mkdir()
    onnx.save(models.tiny_cnn(dynamic_spatial=True), project / "model.onnx")
    (project / "gpux.yml").write_text(
        "name: ovcnn\nmodel:\n  source: ./model.onnx\noutputs:\n  logits:\n    labels: [a, b, c, d]\n", encoding="utf-8"
    )
    [result] = compile_project(project, ["openvino"], root / "dist")
    return result.path, project / "model.onnx"


def test_ir_is_written_verified_and_the_hint_recorded(cnn_bundle: tuple[Path, Path]) -> None:
    bundle, _ = cnn_bundle
    manifest = manifest_of(bundle)
    assert manifest["artifact"]["format"] == "openvino-ir"
    assert (bundle / "model" / "model.xml").is_file() and (bundle / "model" / "model.bin").is_file()
    assert manifest["artifact"]["settings"]["inference_precision"] == "f32"  # explicit, never the CPU default
    assert manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["runtime"].startswith("openvino ")
    reqs = (bundle / "requirements.txt").read_text()
    assert "openvino==" in reqs and "onnxruntime" not in reqs


def test_dynamic_dims_survive_into_the_ir(cnn_bundle: tuple[Path, Path]) -> None:
    bundle, _ = cnn_bundle
    [image] = manifest_of(bundle)["inputs"]
    assert image["shape"][2] is None or isinstance(image["shape"][2], str)  # H stays dynamic
    sys_path = [sys.executable, str(bundle), "run", "--input", json.dumps({"image": np.ones((1, 3, 40, 56)).tolist()})]
    done = subprocess.run(sys_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_runner_output_matches_onnxruntime_on_the_source(cnn_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, model = cnn_bundle
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", image=x)
    done = subprocess.run([sys.executable, str(bundle), "run", "--input", str(tmp_path / "in.npz")],
                          capture_output=True, text=True, check=True)  # fmt: skip
    got = np.asarray(json.loads(done.stdout)["logits"], dtype=np.float32)
    [expected] = ort.InferenceSession(str(model)).run(None, {"image": x})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    verify = subprocess.run([sys.executable, str(bundle), "verify"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def test_real_model_from_a_wheel_compiles_and_verifies(magika_model: Path, tmp_path: Path) -> None:
    project = tmp_path / "magika"
    project.mkdir()
    (project / "model.onnx").write_bytes(magika_model.read_bytes())
    (project / "gpux.yml").write_text("name: magika\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    assert result.verification["status"] == "passed"


def test_auto_tries_the_supported_hints_and_keeps_one_that_passed(make_project, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn(), {"build": {"optimize": "auto"}})
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    build = manifest_of(result.path)["build"]
    names = [c["name"] for c in build["candidates"] if c["status"] != "not tried"]
    assert names[0] == "fp32"
    assert all(n == "fp32" or n.endswith("-hint") for n in names)
    # No calibration: int8-static is not built, and the manifest says why.
    assert [c["name"] for c in build["candidates"] if c["status"] == "not tried"] == ["int8-static"]
    chosen = next(c for c in build["candidates"] if c["name"] == build["variant"])
    assert chosen["status"] == "passed"
    hint = manifest_of(result.path)["artifact"]["settings"]["inference_precision"]
    assert hint == ("f32" if build["variant"] == "fp32" else build["variant"].split("-")[1])


def test_int8_dynamic_is_refused_for_openvino_with_the_alternative(make_project, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn(), {"build": {"precision": "int8-dynamic"}})
    with pytest.raises(ConfigError, match="int8-static"):
        compile_project(project, ["openvino"], tmp_path / "dist")


def test_conversion_failure_message_names_the_node_and_op() -> None:
    from gpuxc_openvino.target import _conversion_message

    model = models.with_if()
    node = model.graph.node[0]
    message = _conversion_message(RuntimeError(f"Check failed at node '{node.name}': rank has to be known"), model)
    assert f"node '{node.name}' (If)" in message and "\n" not in message


@pytest.mark.network
def test_bundle_runs_in_a_venv_holding_only_its_requirements(cnn_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, _ = cnn_bundle
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(bundle / "requirements.txt")], check=True,
                   capture_output=True)  # fmt: skip
    verify = subprocess.run([str(py), str(bundle), "verify"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    request = json.dumps({"image": np.zeros((1, 3, 8, 8)).tolist()})
    run = subprocess.run([str(py), str(bundle), "run", "--input", request], capture_output=True, text=True)
    assert run.returncode == 0 and "logits" in json.loads(run.stdout), run.stderr
    for absent in ("onnxruntime", "gpuxc"):
        probe = subprocess.run([str(py), "-c", f"import {absent}"], capture_output=True, text=True, cwd=tmp_path)
        assert probe.returncode != 0, f"{absent} is importable in the bundle's venv"


@pytest.mark.network
def test_real_recurrent_model_needs_shapes_and_the_error_names_the_nodes(tmp_path: Path) -> None:
    from fixtures.real_models import CATALOG, fetch
    from gpuxc.errors import CompileError

    project = tmp_path / "vad"
    project.mkdir()
    (project / "model.onnx").write_bytes(fetch(CATALOG["silero-vad"]).read_bytes())
    rng = np.random.default_rng(0)
    np.savez(project / "cal.npz", input=rng.standard_normal((4, 1, 512)).astype(np.float32),
             state=np.zeros((4, 2, 1, 128), np.float32), sr=np.full((4,), 16000, np.int64))  # fmt: skip
    base = "name: vad\nmodel:\n  source: ./model.onnx\nbuild:\n  calibration:\n    data: cal.npz\n"
    (project / "gpux.yml").write_text(base, encoding="utf-8")
    with pytest.raises(CompileError, match=r"at node '[^']+' \(Conv\)") as info:
        compile_project(project, ["openvino"], tmp_path / "dist")
    assert "build.shapes" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "dist" / "vad-1.0.0-openvino").exists()
    shapes = "  shapes:\n    input: [1, 512]\n    state: [2, 1, 128]\n"
    (project / "gpux.yml").write_text(base + shapes, encoding="utf-8")
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    assert result.verification["status"] == "passed"


def test_an_input_openvino_drops_is_taken_and_ignored(tmp_path: Path) -> None:
    # CastLike reads only `like`'s dtype: OpenVINO's compiled model has no port for it, but the
    # model (and so the bundle) still declares it; verification and the runner must feed around it.
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 21]>\n'
        "g (float[3,4] x, float16[0] like) => (float16[3,4] y) { y = CastLike(x, like) }"
    )
    project = project_with(tmp_path, model, "castlike")
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    code = ("import sys, json, numpy as np; sys.path.insert(0, sys.argv[1]); import runner; "
            "x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7; "
            "y = runner.load().infer({'x': x, 'like': np.zeros(0, np.float16)})['y']; "
            "print(json.dumps(y.tolist()))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(result.path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.array(json.loads(proc.stdout), np.float16), x.astype(np.float16))


def test_a_model_with_internal_sequences_compiles_after_fold_sequences(tmp_path: Path) -> None:
    # OpenVINO has no tensor-sequence type: without the fold-sequences pass it cannot run this.
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[2,3] X, float[2,3] Y) => (float[2,3] out) {\n"
        "  p = Constant <value = int64 {1}> ()\n  s = SequenceConstruct (X, Y)\n  out = SequenceAt (s, p)\n}"
    )
    project = project_with(tmp_path, model, "seq")
    [result] = compile_project(project, ["openvino"], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    [record] = [p for p in manifest_of(result.path)["build"]["passes"] if p["name"] == "fold-sequences"]
    assert record["status"] == "applied"


def test_an_op_openvino_cannot_convert_is_named_first(tmp_path: Path) -> None:
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        'g (string[2] x) => (string[2] y) { y = StringNormalizer <case_change_action = "LOWER"> (x) }'
    )
    project = project_with(tmp_path, model, "strings")
    with pytest.raises(CompileError) as info:
        compile_project(project, ["openvino"], tmp_path / "dist")
    assert info.value.message == "openvino has no conversion for op StringNormalizer-17"
