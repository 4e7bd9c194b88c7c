"""cuda and directml (ONNX Runtime GPU providers) with image preprocessing: the bundle's ONNX
model carries the gpuxc_pre/ nodes and takes uint8 pixels of any size."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from tests.plugins.preprocess_project import compile_target, manifest, pixel_input_of, preprocessing_nodes


@pytest.mark.parametrize("target", ["cuda", "directml"])
def test_compiles_with_the_preprocessing_inside(tmp_path: Path, target: str) -> None:
    bundle = compile_target(tmp_path, target, resize_mode="center-crop")
    model = onnx.load(bundle / "model" / "model.onnx")
    assert pixel_input_of(model) == ("image", TensorProto.UINT8, ["batch", "image_height", "image_width", 3])
    assert {"Cast", "Resize", "Slice", "Gather", "Mul", "Add"} <= set(preprocessing_nodes(model))
    # No GPU here: graph numerics checked on the CPU stand-in, never called verified.
    assert manifest(bundle)["verification"]["status"] == "unverified"
    assert manifest(bundle)["preprocessing"]["resize_mode"] == "center-crop"
