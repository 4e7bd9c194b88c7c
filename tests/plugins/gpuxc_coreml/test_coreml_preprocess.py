"""coreml with image preprocessing: ML Program inputs cannot be uint8, so the pixels become an
int32 input (recorded, widened by the adapter); the prepended chain (Cast, Transpose, Resize with
sizes, Pad/Slice with computed pads and bounds, Gather on the channel axis, Mul/Add) translates at
the reference shape, the MIL program starts with it, and every op of it but the resize matches
ONNX Runtime through MIL's value inference (CoreML itself predicts only on macOS)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from gpuxc.project.preprocess_graph import prepend_image_preprocessing
from tests.plugins.gpuxc_coreml.coreml_numerics import compare_around
from tests.plugins.preprocess_project import classifier, compile_target, manifest
from tests.project.test_preprocess_graph import identity_model, record

ct = pytest.importorskip("coremltools", reason="the coreml target needs `pip install gpuxc[coreml]`")

from gpuxc_coreml.translate import build_program  # noqa: E402

MODES = {"letterbox": "pad", "center-crop": "slice_by_index", "stretch": None}


def main_ops(program: object) -> list[str]:
    return [op.op_type for op in program.functions["main"].operations if op.op_type != "const"]  # type: ignore[attr-defined]


def package_ops(package: Path) -> list[str]:
    """Op types of the saved ML Program's main function, in order (consts left out)."""
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    return [op.type for op in block.operations if op.type != "const"]


def package_input(package: Path) -> tuple[str, int, list[int]]:
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    [pixels] = spec.description.input
    return pixels.name, pixels.type.multiArrayType.dataType, list(pixels.type.multiArrayType.shape)


INT32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32


def test_compiles_at_the_reference_size_with_int32_pixels(tmp_path: Path) -> None:
    """Default: the package takes pictures of the size the graph resizes to (the runner resizes
    decoded images to it), so the resize and the zero letterbox are identities coremltools drops."""
    bundle = compile_target(tmp_path, "coreml")
    record_ = manifest(bundle)
    settings = record_["artifact"]["settings"]
    assert settings["input_dtypes"] == {"image": "int32"}
    assert settings["input_shapes"]["image"] == [1, 20, 24, 3]
    if sys.platform != "darwin":
        assert record_["verification"]["status"] == "unverified"
    package = bundle / "model" / "model.mlpackage"
    assert package_input(package) == ("image", INT32, [1, 20, 24, 3])
    # The manifest says the fixed size too: the runner brings decoded pictures to it.
    [pixels] = record_["inputs"]
    assert pixels["name"] == "image" and pixels["dtype"] == "uint8" and pixels["shape"] == [1, 20, 24, 3]
    ops = package_ops(package)
    assert ops[:3] == ["cast", "transpose", "gather"] and "resize_bilinear" not in ops  # then the normalisation


@pytest.mark.parametrize("mode", list(MODES))
def test_compiles_at_a_declared_picture_size_with_the_whole_chain(tmp_path: Path, mode: str) -> None:
    """build.shapes fixes another picture size: resize, letterbox pad / centre crop stay in the program."""
    bundle = compile_target(tmp_path, "coreml", build={"shapes": {"image": [1, 31, 17, 3]}}, resize_mode=mode)
    package = bundle / "model" / "model.mlpackage"
    assert package_input(package) == ("image", INT32, [1, 31, 17, 3])
    ops = package_ops(package)
    assert ops[:3] == ["cast", "transpose", "resize_bilinear"]
    if MODES[mode]:
        assert ops[3] == MODES[mode]
    assert "gather" in ops[3:5]  # RGB -> BGR on the channel axis
    assert manifest(bundle)["artifact"]["settings"]["input_dtypes"] == {"image": "int32"}
    assert manifest(bundle)["inputs"][0]["shape"] == [1, 31, 17, 3]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("height, width", [(31, 17), (12, 40)])
def test_translated_chain_matches_onnx_runtime(mode: str, layout: str, height: int, width: int) -> None:
    """The chain alone (a model returning what it is fed) at a non-reference size: compare_around
    feeds the resize's output from ONNX Runtime (MIL has no value inference for it); the cast,
    transpose, pad / slice with folded bounds, gather and normalisation are computed by MIL."""
    r = record(size=[24, 20], resize_mode=mode, channels="bgr", layout=layout)
    model = prepend_image_preprocessing(identity_model(size=[24, 20], layout=layout), r)
    pixels = np.random.default_rng(height).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    errors = compare_around(model, {"image": pixels})
    assert errors["y"] < 1e-5


def resize_model(height: int, width: int, out_h: int, out_w: int, transform: str) -> onnx.ModelProto:
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 3, out_h, out_w])
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode=transform)  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, height, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, out_h, out_w])
    graph = helper.make_graph([node], "g", [x], [y], [sizes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("transform, sampling", [("half_pixel", "UNALIGN_CORNERS"),
                                                 ("align_corners", "STRICT_ALIGN_CORNERS"),
                                                 ("asymmetric", "DEFAULT")])  # fmt: skip
def test_resize_with_sizes_gives_exactly_those_sizes(transform: str, sampling: str) -> None:
    """22 -> 13 and 7 -> 31: floor(in * fp32(out / in)) falls one short; resize_bilinear takes the sizes."""
    program = build_program(resize_model(22, 7, 13, 31, transform), {"x": [1, 3, 22, 7]})
    [resize] = [op for op in program.functions["main"].operations if op.op_type == "resize_bilinear"]
    assert resize.sampling_mode.val == sampling
    assert tuple(program.functions["main"].outputs[0].shape) == (1, 3, 13, 31)


def test_narrow_integer_inputs_become_int32_placeholders() -> None:
    model = prepend_image_preprocessing(classifier(), record(size=[24, 20]))
    program = build_program(model, {"image": [2, 33, 9, 3]})
    [pixels] = program.functions["main"].inputs.values()
    assert ct.converters.mil.mil.types.builtin_to_string(pixels.dtype) == "int32"
    assert main_ops(program)[:3] == ["cast", "transpose", "resize_bilinear"]
