"""The coreml target: op-by-op ONNX → MIL translation, .mlpackage bundles, macOS-only verification."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import CompileError

pytest.importorskip("coremltools", reason="the coreml target needs `pip install gpuxc[coreml]`")

from gpuxc_coreml.translate import build_program, evaluate, output_signature, signature_mismatches  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def image_classifier() -> onnx.ModelProto:
    source = ROOT / "examples" / "image-classifier" / "make_model.py"
    spec = importlib.util.spec_from_file_location("make_model", source)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model()


def project_with(root: Path, model: onnx.ModelProto, name: str) -> Path:
    project = root / name
    project.mkdir()
    onnx.save(model, project / "model.onnx")
    (project / "gpux.yml").write_text(f"name: {name}\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    return project


def manifest_of(path: Path) -> dict:
    return json.loads((path / "gpux-bundle.json").read_text())


def with_top_k(count: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    outputs = [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 8])]
    for i in range(count):
        nodes.append(helper.make_node("TopK", ["r", "k"], [f"v{i}", f"i{i}"], axis=-1))
        outputs.append(helper.make_tensor_value_info(f"v{i}", TensorProto.FLOAT, [1, 2]))
    graph = helper.make_graph(nodes, "topk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])], outputs,
                              [helper.make_tensor("k", TensorProto.INT64, [1], [2])])  # fmt: skip
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


@pytest.mark.parametrize(("name", "shape"), [("cnn", [1, 3, 32, 32]), ("classifier", [1, 3, 64, 64])])
def test_mil_outputs_match_the_onnx_outputs(name: str, shape: list[int]) -> None:
    model = models.tiny_cnn() if name == "cnn" else image_classifier()
    shapes = {"image": shape}
    program = build_program(model, shapes)
    assert signature_mismatches(model, shapes, program) == []
    x = np.zeros(shape, np.float32)
    [expected] = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})
    [(out_name, out_shape, dtype)] = output_signature(program)
    assert (out_name, out_shape, dtype) == (model.graph.output[0].name, expected.shape, "fp32")


def _single_op_model(nodes: list, inputs: list, output: str, inits: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "ops", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              inits or [])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _f(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


CASES = {
    "elementwise": ([helper.make_node("Mul", ["a", "b"], ["m"]), helper.make_node("Sub", ["m", "a"], ["s"]),
                     helper.make_node("Div", ["s", "b"], ["d"]), helper.make_node("Tanh", ["d"], ["t"]),
                     helper.make_node("Erf", ["t"], ["e"]), helper.make_node("Neg", ["e"], ["y"])], []),
    "activations": ([helper.make_node("LeakyRelu", ["a"], ["l"], alpha=0.2),
                     helper.make_node("HardSwish", ["l"], ["h"]), helper.make_node("HardSigmoid", ["h"], ["hs"]),
                     helper.make_node("Clip", ["hs", "lo", "hi"], ["y"])],
                    [helper.make_tensor("lo", TensorProto.FLOAT, [], [0.55]),
                     helper.make_tensor("hi", TensorProto.FLOAT, [], [0.6])]),
    "softmax": ([helper.make_node("LogSoftmax", ["a"], ["ls"], axis=1), helper.make_node("Softmax", ["b"], ["sm"]),
                 helper.make_node("Add", ["ls", "sm"], ["y"])], []),
    "shape-ops": ([helper.make_node("Transpose", ["a"], ["t"], perm=[1, 0]),
                   helper.make_node("Slice", ["t", "st", "en", "ax", "stp"], ["s"]),
                   helper.make_node("Reshape", ["s", "shp"], ["r"]),
                   helper.make_node("Concat", ["r", "r"], ["c"], axis=0),
                   helper.make_node("Unsqueeze", ["c", "ax0"], ["u"]),
                   helper.make_node("Squeeze", ["u", "ax0"], ["y"])],
                  [_i64("st", [-1]), _i64("en", [-(2**63)]), _i64("ax", [0]), _i64("stp", [-2]), _i64("shp", [0, -1]),
                   _i64("ax0", [0])]),
    "gather-reduce-where": ([helper.make_node("Gather", ["a", "idx"], ["g"], axis=1),
                             helper.make_node("ReduceMean", ["g"], ["rm"], axes=[1], keepdims=1),
                             helper.make_node("ReduceSum", ["a", "ax1"], ["rs"], keepdims=1),
                             helper.make_node("Greater", ["rm", "rs"], ["gt"]),
                             helper.make_node("Where", ["gt", "g", "b"], ["y"])],
                            [_i64("idx", [3, -1, 0, 2, 1, 4]), _i64("ax1", [1])]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_translated_ops_compute_what_onnx_runtime_computes(case: str) -> None:
    # MIL's value inference runs the translated ops in NumPy: a numerics check without CoreML.
    nodes, inits = CASES[case]
    model = _single_op_model(nodes, [_f("a", [4, 6]), _f("b", [4, 6])], "y", inits)
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((4, 6)).astype(np.float32), "b": rng.random((4, 6)).astype(np.float32) + 0.5}
    [expected] = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = evaluate(model, feeds)["y"]
    assert got is not None, "no value inference for this case"
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unsupported_ops_fail_before_any_bundle_is_written(tmp_path: Path) -> None:
    project = project_with(tmp_path, with_top_k(3), "topk")
    with pytest.raises(CompileError, match=r"coreml cannot translate 1 op type\(s\): TopK x3"):
        compile_project(project, ["coreml"], tmp_path / "dist")
    assert not (tmp_path / "dist" / "topk-1.0.0-coreml").exists()
    assert not any((tmp_path / "dist").glob("*")) if (tmp_path / "dist").exists() else True


@pytest.mark.parametrize(("model", "convertible", "unsupported"),
                         [("cnn", True, {}), ("topk", False, {"TopK": 2})])  # fmt: skip
def test_inspect_reports_whether_the_model_converts(tmp_path: Path, model: str, convertible: bool,
                                                    unsupported: dict) -> None:  # fmt: skip
    path = tmp_path / "model.onnx"
    onnx.save(models.tiny_cnn() if model == "cnn" else with_top_k(2), path)
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


def _opset20(nodes: list, inputs: list, output: str, inits: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "ops", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              inits or [])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


MORE_CASES = {
    "gelu-layernorm": ([helper.make_node("Gelu", ["a"], ["g"]),
                        helper.make_node("LayerNormalization", ["g", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)],
                       [helper.make_tensor("gamma", TensorProto.FLOAT, [6], [1.0, 0.5, 2.0, 1.0, 1.5, 1.0]),
                        helper.make_tensor("beta", TensorProto.FLOAT, [6], [0.0, 0.1, 0.0, -0.2, 0.0, 0.3])]),
    "split-tile-expand-pad": ([helper.make_node("Split", ["a", "sizes"], ["s1", "s2"], axis=1),
                               helper.make_node("Tile", ["s1", "reps"], ["t"]),
                               helper.make_node("Expand", ["s2", "shape"], ["e"]),
                               helper.make_node("Concat", ["t", "e"], ["c"], axis=1),
                               helper.make_node("Pad", ["c", "pads", "pv"], ["y"], mode="constant")],
                              [_i64("sizes", [2, 4]), _i64("reps", [1, 2]), _i64("shape", [4, 4]),
                               _i64("pads", [0, 1, 0, 1]), helper.make_tensor("pv", TensorProto.FLOAT, [], [0.5])]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MORE_CASES))
def test_more_translated_ops_compute_what_onnx_runtime_computes(case: str) -> None:
    nodes, inits = MORE_CASES[case]
    model = _opset20(nodes, [_f("a", [4, 6])], "y", inits)
    feeds = {"a": np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)}
    [expected] = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = evaluate(model, feeds)["y"]
    if got is None:
        # MIL has no value inference for some ops: the static shape is still checked.
        program = build_program(model, {"a": [4, 6]})
        assert output_signature(program)[0][1] == expected.shape
        return
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_norm_resize_and_transposed_conv_translate_with_onnx_shapes() -> None:
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "wt"),
        numpy_helper.from_array(np.ones(3, np.float32), "sc"),
        numpy_helper.from_array(np.zeros(3, np.float32), "bi"),
        helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2]),
    ]
    nodes = [helper.make_node("InstanceNormalization", ["x", "sc", "bi"], ["n"]),
             helper.make_node("Resize", ["n", "", "scales"], ["r"], mode="nearest"),
             helper.make_node("ConvTranspose", ["r", "wt"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])]  # fmt: skip
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [_f("x", [1, 3, 8, 8])], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    [expected] = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert signature_mismatches(model, {"x": [1, 3, 8, 8]}, build_program(model, {"x": [1, 3, 8, 8]})) == []
    assert output_signature(build_program(model, {"x": [1, 3, 8, 8]}))[0][1] == expected.shape


def test_tensor_names_coremltools_renames_are_mapped_for_the_runner(tmp_path: Path) -> None:
    # Paddle/TF exports name tensors like 'save_infer_model/scale_0.tmp_1'; CoreML wants identifiers.
    graph = helper.make_graph([helper.make_node("Relu", ["in:0"], ["out/put.0"])], "g", [_f("in:0", [1, 4])],
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


def test_inspect_predicts_that_shape_arithmetic_folds_away(tmp_path: Path) -> None:
    # x[N, 4] -> Range(0, N) drives nothing but a shape: with fixed shapes it folds to a constant.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Range", ["start", "n", "one"], ["r"]),
        helper.make_node("Cast", ["r"], ["rf"], to=1),
        helper.make_node("ReduceSum", ["rf"], ["total"], keepdims=0),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    scalars = (("zero", 0), ("start", 0), ("one", 1))
    inits = [helper.make_tensor(name, TensorProto.INT64, [], [v]) for name, v in scalars]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)  # fmt: skip
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    gpuxc = Path(sys.executable).parent / "gpuxc"
    done = subprocess.run([gpuxc, "inspect", path, "--target", "coreml", "--json"], capture_output=True, text=True)
    report = json.loads(done.stdout)
    assert report["unsupported_before_folding"] == {"Range": 1}
    assert report["convertible"] is True and report["unsupported"] == {}
