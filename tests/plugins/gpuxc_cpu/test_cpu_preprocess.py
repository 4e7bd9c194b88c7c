"""cpu target with image preprocessing: the bundle's model takes uint8 pixels of any size and
computes what NumPy preprocessing + the source model compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from tests.plugins.preprocess_project import classifier, compile_target, manifest, pixel_input_of, preprocessing_nodes
from tests.project.test_preprocess_graph import preprocess_numpy, record


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_target(tmp_path_factory.mktemp("cpu-pre"), "cpu")


def test_the_preprocessing_is_inside_the_bundle_model(bundle: Path) -> None:
    model = onnx.load(bundle / "model" / "model.onnx")
    assert pixel_input_of(model) == ("image", TensorProto.UINT8, ["batch", "image_height", "image_width", 3])
    assert {"Cast", "Resize", "Pad", "Gather", "Mul", "Add"} <= set(preprocessing_nodes(model))
    [entry] = manifest(bundle)["inputs"]
    assert entry["name"] == "image" and entry["dtype"] == "uint8"
    assert manifest(bundle)["verification"]["status"] == "passed"


@pytest.mark.parametrize("height, width", [(31, 17), (9, 50), (20, 24)])
def test_bundle_model_equals_numpy_preprocessing_and_the_source_model(bundle: Path, height: int, width: int) -> None:
    pixels = np.random.default_rng(height).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(bundle / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    [got] = session.run(None, {"image": pixels})
    imagenet = record(feeds="pixel_values", size=[24, 20], resize_mode="letterbox", channels="bgr",
                      mean=[0.406, 0.456, 0.485], std=[0.225, 0.224, 0.229])  # fmt: skip
    tensors = preprocess_numpy(pixels, imagenet).astype(np.float32)
    source = ort.InferenceSession(classifier().SerializeToString(), providers=["CPUExecutionProvider"])
    [want] = source.run(None, {"pixel_values": tensors})
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
