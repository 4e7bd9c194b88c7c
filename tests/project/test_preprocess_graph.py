"""Image preprocessing prepended as ONNX ops: ONNX Runtime on the new graph equals a NumPy
implementation of the same steps (bilinear half_pixel resize as ORT computes it, letterbox,
centre crop, channel order, normalisation, layout, dtype), at odd sizes, up and down."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from gpuxc.errors import ModelError
from gpuxc.project.preprocess_graph import MIN_OPSET, PREFIX, prepend_image_preprocessing
from gpuxc.project.preprocessing import ImagePreprocessing

SIZE = [8, 6]  # [width, height] the graph resizes to
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def identity_model(name: str = "pixel_values", layout: str = "nchw", channels: int = 3, opset: int = 17,
                   dtype: int = TensorProto.FLOAT, size: list[Any] | None = None) -> onnx.ModelProto:  # fmt: skip
    """A model that returns its image input: the output is exactly what preprocessing fed it."""
    width, height = size or SIZE
    shape = ["N", channels, height, width] if layout == "nchw" else ["N", height, width, channels]
    graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "g",
                              [helper.make_tensor_value_info(name, dtype, shape)],
                              [helper.make_tensor_value_info("y", dtype, shape)])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def record(**overrides: Any) -> ImagePreprocessing:
    fields: dict[str, Any] = {"input": "image", "feeds": "pixel_values", "channels": "rgb", "channel_count": 3,
                              "layout": "nchw", "size": SIZE, "resize_mode": "stretch", "pad_value": 114,
                              "scale": 255.0, "mean": MEAN, "std": STD, "dtype": "float32"}  # fmt: skip
    fields.update(overrides)
    return ImagePreprocessing(**fields)


def run(model: onnx.ModelProto, pixels: np.ndarray, name: str = "image") -> np.ndarray:
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {name: pixels})[0]


# -- the NumPy reference ------------------------------------------------------------------


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """[H, W, C] float -> [out_h, out_w, C]: ONNX Resize linear, half_pixel, no antialias (ORT)."""
    height, width = image.shape[:2]

    def grid(size: int, new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(new) + 0.5) * size / new - 0.5, 0, size - 1)
        first = np.floor(pos).astype(int)
        return first, np.minimum(first + 1, size - 1), pos - first

    y0, y1, wy = grid(height, out_h)
    x0, x1, wx = grid(width, out_w)
    wy, wx = wy[:, None, None], wx[None, :, None]
    return (image[y0][:, x0] * (1 - wy) * (1 - wx) + image[y0][:, x1] * (1 - wy) * wx
            + image[y1][:, x0] * wy * (1 - wx) + image[y1][:, x1] * wy * wx)  # fmt: skip


def preprocess_numpy(pixels: np.ndarray, r: ImagePreprocessing) -> np.ndarray:
    """What the prepended graph must compute, one picture at a time, in float64."""
    out = []
    for picture in pixels.astype(np.float64):
        height, width = picture.shape[:2]
        if r.size is not None:
            th, tw = r.size[1], r.size[0]
            if r.resize_mode == "stretch":
                picture = resize_bilinear(picture, th, tw)
            else:
                # The scale and the rounding as the graph does them: float32, round half to even.
                ratio = np.array([th, tw], np.float32) / np.array([height, width], np.float32)
                scale = ratio.min() if r.resize_mode == "letterbox" else ratio.max()
                nh, nw = np.round(np.array([height, width], np.float32) * scale).astype(int)
                if r.resize_mode == "letterbox":
                    nh, nw = min(nh, th), min(nw, tw)
                    canvas = np.full((th, tw, picture.shape[2]), float(r.pad_value))
                    top, left = (th - nh) // 2, (tw - nw) // 2
                    canvas[top:top + nh, left:left + nw] = resize_bilinear(picture, nh, nw)
                    picture = canvas
                else:
                    nh, nw = max(nh, th), max(nw, tw)
                    top, left = (nh - th) // 2, (nw - tw) // 2
                    picture = resize_bilinear(picture, nh, nw)[top:top + th, left:left + tw]
        if r.channels == "bgr":
            picture = picture[..., ::-1]
        picture = (picture / r.scale - np.array(r.mean)) / np.array(r.std)
        out.append(picture.transpose(2, 0, 1) if r.layout == "nchw" else picture)
    return np.stack(out)


def pixels(height: int, width: int, channels: int = 3, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, channels), dtype=np.uint8)


# -- tests ----------------------------------------------------------------------------------

SOURCES = [(20, 13), (5, 7), (6, 8), (3, 17)]  # down, up, the size itself, mixed (odd sizes)


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center-crop"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("channels", ["rgb", "bgr"])
def test_onnx_runtime_equals_numpy(mode: str, layout: str, channels: str) -> None:
    r = record(resize_mode=mode, layout=layout, channels=channels)
    model = prepend_image_preprocessing(identity_model(layout=layout), r)
    for height, width in SOURCES:
        x = pixels(height, width, batch=2, seed=height)
        got = run(model, x)
        assert got.shape == ((2, 3, 6, 8) if layout == "nchw" else (2, 6, 8, 3))
        np.testing.assert_allclose(got, preprocess_numpy(x, r), atol=1e-4, rtol=0,
                                   err_msg=f"{mode} {layout} {channels} from {height}x{width}")  # fmt: skip


def test_letterbox_pads_centred_with_pad_value() -> None:
    """A wide picture letterboxed into a square: equal bands of pad_value above and below."""
    r = record(resize_mode="letterbox", size=[8, 8], mean=[0.0] * 3, std=[1.0] * 3, scale=1.0, pad_value=114)
    got = run(prepend_image_preprocessing(identity_model(size=[8, 8]), r), np.zeros((1, 4, 8, 3), np.uint8))
    assert (got[0, :, :2] == 114).all() and (got[0, :, 6:] == 114).all() and (got[0, :, 2:6] == 0).all()


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center-crop"])
def test_gray(mode: str) -> None:
    r = record(channels="gray", channel_count=1, mean=[0.45], std=[0.22], resize_mode=mode)
    model = prepend_image_preprocessing(identity_model(channels=1), r)
    for height, width in SOURCES:
        x = pixels(height, width, channels=1)
        np.testing.assert_allclose(run(model, x), preprocess_numpy(x, r), atol=1e-4, rtol=0)


def test_mean_std_scale_and_float16_model_input() -> None:
    r = record(scale=1.0, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], dtype="float16",
               resize_mode="letterbox")  # fmt: skip
    model = prepend_image_preprocessing(identity_model(dtype=TensorProto.FLOAT16), r)
    x = pixels(11, 19)
    got = run(model, x)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), preprocess_numpy(x, r), atol=5e-3, rtol=1e-3)


def test_no_resize_keeps_the_model_spatial_dims() -> None:
    """size None (a model taking any size): cast, normalise and layout only; the input keeps H and W."""
    r = record(size=None)
    model = prepend_image_preprocessing(identity_model(size=["w", "h"]), r)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", "h", "w", 3]
    x = pixels(5, 9)
    np.testing.assert_allclose(run(model, x), preprocess_numpy(x, r), atol=1e-4, rtol=0)


def test_pixel_input_is_uint8_nhwc_any_size_and_replaces_the_fed_input() -> None:
    model = prepend_image_preprocessing(identity_model(), record())
    [image] = model.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and image.type.tensor_type.elem_type == TensorProto.UINT8
    assert dims == ["N", "image_height", "image_width", 3]
    own = [n for n in model.graph.node if not n.name.startswith(PREFIX)]
    assert [n.op_type for n in own] == ["Identity"] and own[0].input[0] == "pixel_values"


def test_pixel_input_named_like_the_replaced_input() -> None:
    """input == feeds: the pixels take the name, the model's nodes read the result under another."""
    r = record(feeds="image")
    model = prepend_image_preprocessing(identity_model(name="image"), r)
    assert [i.name for i in model.graph.input] == ["image"]
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    x = pixels(9, 14)
    np.testing.assert_allclose(run(model, x), preprocess_numpy(x, r), atol=1e-4, rtol=0)


def passthrough_model() -> onnx.ModelProto:
    """The image input is also returned as an output (some exports echo their input)."""
    shape = ["N", 3, 6, 8]
    graph = helper.make_graph([helper.make_node("Relu", ["image"], ["y"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
                               helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_replaced_input_that_is_also_an_output() -> None:
    """Under its own name the output would be the uint8 pixels: refused; under another, it is the tensors."""
    with pytest.raises(ModelError, match="'image' is also a model output") as info:
        prepend_image_preprocessing(passthrough_model(), record(feeds="image"))
    assert info.value.hint and "image_input" in info.value.hint
    r = record(feeds="image", input="pixels")
    model = prepend_image_preprocessing(passthrough_model(), r)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = pixels(7, 9)
    _, echoed = session.run(None, {"pixels": x})
    np.testing.assert_allclose(echoed, preprocess_numpy(x, r), atol=1e-4, rtol=0)


def if_model(name: str) -> onnx.ModelProto:
    """The image input read inside both branches of an If (outer-scope reads) and by the main graph."""
    shape = ["N", 3, 6, 8]

    def branch(op: str) -> onnx.GraphProto:
        node = helper.make_node(op, [name, name], [f"{op}_out"])
        return helper.make_graph([node], op, [], [helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT,
                                                                                  shape)])  # fmt: skip

    zero = helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])
    nodes = [helper.make_node("ReduceMean", [name], ["mean"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=zero),
             helper.make_node("Greater", ["mean", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["y"], then_branch=branch("Add"),
                              else_branch=branch("Mul"))]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("name", ["image", "pixel_values"])
def test_if_subgraph_reading_the_replaced_input(name: str) -> None:
    for mean, op in (([0.0] * 3, np.add), ([300.0] * 3, np.multiply)):  # both branches taken
        r = record(feeds=name, mean=mean, std=[1.0] * 3, scale=1.0)
        model = prepend_image_preprocessing(if_model(name), r)
        x = pixels(7, 12)
        want = preprocess_numpy(x, r)
        np.testing.assert_allclose(run(model, x), op(want, want), atol=1e-3, rtol=1e-6)


@pytest.mark.parametrize("opset", [MIN_OPSET, 12, 13])
@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center-crop"])
def test_oldest_opsets(opset: int, mode: str) -> None:
    """Opsets 11 and 12: Resize with explicit roi/scales inputs, Min/Max without int64 kernels."""
    r = record(resize_mode=mode)
    model = prepend_image_preprocessing(identity_model(opset=opset), r)
    x = pixels(20, 13)
    np.testing.assert_allclose(run(model, x), preprocess_numpy(x, r), atol=1e-4, rtol=0)


def test_opset_before_11_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ModelError, match=r"opset 11 or later; this one is opset 10") as info:
        prepend_image_preprocessing(identity_model(opset=10), record())
    assert info.value.hint and "re-export" in info.value.hint
