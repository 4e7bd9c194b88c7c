"""The coreml target: .mlpackage bundles, errors before anything is written, `gpuxc inspect`,
macOS-only verification."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import CompileError

pytest.importorskip("coremltools", reason="the coreml target needs `pip install gpuxc[coreml]`")

from tests.plugins.gpuxc_coreml.coreml_models import f32, image_classifier  # noqa: E402


def project_with(root: Path, model: onnx.ModelProto, name: str) -> Path:
    project = root / name
    project.mkdir()
    onnx.save(model, project / "model.onnx")
    (project / "gpux.yml").write_text(f"name: {name}\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    return project


def manifest_of(path: Path) -> dict:
    return json.loads((path / "gpux-bundle.json").read_text())


def with_hardmax(count: int) -> onnx.ModelProto:
    # Hardmax has no translator (a runtime one-hot of the argmax; rare in exported models).
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    outputs = [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 8])]
    for i in range(count):
        nodes.append(helper.make_node("Hardmax", ["r"], [f"v{i}"], axis=-1))
        outputs.append(helper.make_tensor_value_info(f"v{i}", TensorProto.FLOAT, [1, 8]))
    graph = helper.make_graph(nodes, "hardmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              outputs)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coreml")
    out = {}
    for name, model in (("cnn", models.tiny_cnn(dynamic_spatial=True)), ("classifier", image_classifier())):
        [result] = compile_project(project_with(root, model, name), ["coreml"], root / "dist")
        out[name] = result.path
    return out


@pytest.mark.parametrize("name", ["cnn", "classifier"])
def test_bundle_holds_an_mlpackage_recorded_unverified_off_macos(bundles: dict[str, Path], name: str) -> None:
    bundle = bundles[name]
    manifest = manifest_of(bundle)
    assert (bundle / "model" / "model.mlpackage" / "Manifest.json").is_file()
    assert manifest["artifact"]["entry"] == "model/model.mlpackage"
    assert manifest["artifact"]["format"] == "mlpackage"
    files = {f["path"] for f in manifest["files"]}
    assert any(p.startswith("model/model.mlpackage/") for p in files)
    reqs = (bundle / "requirements.txt").read_text()
    assert "coremltools==" in reqs and "sys_platform == 'darwin'" in reqs and "onnxruntime" not in reqs
    if sys.platform != "darwin":
        assert manifest["verification"]["status"] == "unverified"
        assert "macOS" in manifest["verification"]["reason"]


def test_unsupported_ops_fail_before_any_bundle_is_written(tmp_path: Path) -> None:
    project = project_with(tmp_path, with_hardmax(3), "hardmax")
    with pytest.raises(CompileError, match=r"coreml cannot translate 1 op type\(s\): Hardmax x3"):
        compile_project(project, ["coreml"], tmp_path / "dist")
    assert not (tmp_path / "dist" / "hardmax-1.0.0-coreml").exists()
    assert not any((tmp_path / "dist").glob("*")) if (tmp_path / "dist").exists() else True


@pytest.mark.parametrize(("model", "convertible", "unsupported"),
                         [("cnn", True, {}), ("hardmax", False, {"Hardmax": 2})])  # fmt: skip
def test_inspect_reports_whether_the_model_converts(tmp_path: Path, model: str, convertible: bool,
                                                    unsupported: dict) -> None:  # fmt: skip
    path = tmp_path / "model.onnx"
    onnx.save(models.tiny_cnn() if model == "cnn" else with_hardmax(2), path)
    gpuxc = Path(sys.executable).parent / "gpuxc"
    done = subprocess.run([gpuxc, "inspect", path, "--target", "coreml", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {k: report[k] for k in ("target", "convertible", "unsupported")} == {
        "target": "coreml", "convertible": convertible, "unsupported": unsupported}  # fmt: skip
    other = subprocess.run([gpuxc, "inspect", path, "--target", "openvino"], capture_output=True, text=True)
    assert other.returncode != 0 and "only coreml" in other.stderr


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="CoreML predicts only on macOS")
def test_bundle_verifies_on_macos(bundles: dict[str, Path]) -> None:
    for bundle in bundles.values():
        done = subprocess.run([sys.executable, str(bundle), "verify"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_tensor_names_coremltools_renames_are_mapped_for_the_runner(tmp_path: Path) -> None:
    # Paddle/TF exports name tensors like 'save_infer_model/scale_0.tmp_1'; CoreML wants identifiers.
    graph = helper.make_graph([helper.make_node("Relu", ["in:0"], ["out/put.0"])], "g", [f32("in:0", [1, 4])],
                              [helper.make_tensor_value_info("out/put.0", TensorProto.FLOAT, [1, 4])])  # fmt: skip
    project = tmp_path / "p"
    project.mkdir()
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), project / "model.onnx"
    )
    (project / "gpux.yml").write_text("name: names\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    [result] = compile_project(project, ["coreml"], tmp_path / "dist")
    settings = json.loads((result.path / "gpux-bundle.json").read_text())["artifact"]["settings"]
    assert settings["output_names"] == {"out/put.0": "out_put_0"}
    assert settings["input_names"] == {"in:0": "in_0"}


@pytest.mark.parametrize(("inp", "out", "renamed_in", "renamed_out"),
                         [("0", "1", "var_0", "var_1"), ("string", "bool", "string_workaround", "bool_workaround")])
def test_numeric_and_reserved_tensor_names_compile(tmp_path: Path, inp: str, out: str, renamed_in: str,
                                                   renamed_out: str) -> None:  # fmt: skip
    # PyTorch exports name tensors "0", "1"...; MIL prefixes them (and suffixes reserved words).
    graph = helper.make_graph([helper.make_node("Relu", [inp], [out])], "g", [f32(inp, [1, 4])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])])  # fmt: skip
    project = project_with(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "nums")
    [result] = compile_project(project, ["coreml"], tmp_path / "dist")
    settings = manifest_of(result.path)["artifact"]["settings"]
    assert settings["input_names"] == {inp: renamed_in} and settings["output_names"] == {out: renamed_out}


def test_inspect_predicts_that_shape_arithmetic_folds_away(tmp_path: Path) -> None:
    # x[N, 4] -> Range(0, N) % 3 drives nothing but a constant: shapes are static in the MIL program,
    # so the chain folds while translating, and Hardmax (no translator) on it needs none either.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Range", ["start", "n", "one"], ["r"]),
        helper.make_node("Mod", ["r", "three"], ["m"]),
        helper.make_node("Cast", ["m"], ["rf"], to=1),
        helper.make_node("Hardmax", ["rf"], ["h"], axis=0),
        helper.make_node("ReduceSum", ["h"], ["total"], keepdims=0),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    scalars = (("zero", 0), ("start", 0), ("one", 1), ("three", 3))
    inits = [helper.make_tensor(name, TensorProto.INT64, [], [v]) for name, v in scalars]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)  # fmt: skip
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    gpuxc = Path(sys.executable).parent / "gpuxc"
    done = subprocess.run([gpuxc, "inspect", path, "--target", "coreml", "--json"], capture_output=True, text=True)
    report = json.loads(done.stdout)
    assert report["convertible"] is True and report["unsupported"] == {}
    runtime = path.with_name("runtime.onnx")  # the same Hardmax on the input: no folding can save it
    graph.node.append(helper.make_node("Hardmax", ["x"], ["y2"]))
    graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 4]))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), runtime)
    done = subprocess.run([gpuxc, "inspect", runtime, "--target", "coreml", "--json"], capture_output=True, text=True)
    assert json.loads(done.stdout)["unsupported"] == {"Hardmax": 1}


def test_compile_prints_no_coremltools_progress_bars(tmp_path: Path) -> None:
    # coremltools draws tqdm bars for its MIL pipelines; a compile's stderr is gpuxc's lines only.
    project = project_with(tmp_path, models.tiny_cnn(), "quiet")
    proc = subprocess.run([sys.executable, "-m", "gpuxc", "compile", str(project), "-t", "coreml", "-o",
                           str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    noise = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("gpuxc:", "coreml:"))]
    assert noise == [], noise


def test_an_input_the_program_never_reads_is_mapped_to_none(tmp_path: Path) -> None:
    # After fold-sequences picks Y out of [X, Y], nothing reads X: the package has no X input, and
    # the runner (templates/coreml/runtime.py) drops it from the feeds.
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[2,3] X, float[2,3] Y) => (float[2,3] out) {\n"
        "  p = Constant <value = int64 {1}> ()\n  s = SequenceConstruct (X, Y)\n  out = SequenceAt (s, p)\n}"
    )
    [result] = compile_project(project_with(tmp_path, model, "seq"), ["coreml"], tmp_path / "dist")
    manifest = manifest_of(result.path)
    assert manifest["artifact"]["settings"]["input_names"] == {"X": None, "Y": "Y"}
    assert [p["status"] for p in manifest["build"]["passes"] if p["name"] == "fold-sequences"] == ["applied"]


def test_a_scalar_input_is_refused_by_name(tmp_path: Path) -> None:
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\ng (float[3] x, float s) => (float[3] y) { y = Mul(x, s) }'
    )
    with pytest.raises(CompileError) as info:
        compile_project(project_with(tmp_path, model, "scalar"), ["coreml"], tmp_path / "dist")
    assert info.value.message == "coreml: input 's' is a scalar; Core ML inputs have rank 1 to 5"
