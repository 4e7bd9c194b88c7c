"""Image preprocessing as ONNX operators prepended to the model, so that every target does it on its device.

The new graph input takes uint8 pixels ``[N, H, W, C]`` (channels last, RGB or gray: what an image
decoder gives) of any height and width. In order, the nodes:

1. cast to float32 and transpose to NCHW (Resize is supported on every target in NCHW);
2. resize to ``size`` (ONNX Resize, ``linear``, ``half_pixel``: OpenCV's INTER_LINEAR and
   torchvision's ``antialias=False``): ``stretch`` to the size; ``letterbox`` keeps the aspect
   ratio and pads (centred, with ``pad_value``); ``center-crop`` covers the size and crops the centre;
3. reorder channels (RGB to BGR) with a Gather;
4. normalise: ``(x / scale - mean) / std`` per channel, folded into one Mul and one Add;
5. transpose to NHWC when the model takes it, and cast to the model input's float type.

The last node writes the replaced model input's name, so the model's own nodes are untouched.
Sizes are computed with Shape/Div/Min/Round nodes; once a target fixes the input shape (CoreML,
TensorRT profiles) constant folding turns them into constants. Every node is named
``gpuxc_pre/<step>`` so reports and per-node precision can tell them from the model's own.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

from gpuxc.errors import ModelError
from gpuxc.project.model import LoadedModel, describe, infer_shapes, save_model
from gpuxc.project.preprocessing import ImagePreprocessing

__all__ = ["MIN_OPSET", "PREFIX", "prepend_image_preprocessing", "with_image_preprocessing"]

MIN_OPSET = 11  # Resize with sizes, Slice/Pad with tensor inputs, Round
PREFIX = "gpuxc_pre/"
_FLOAT_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
                "bfloat16": TensorProto.BFLOAT16}  # fmt: skip


def with_image_preprocessing(loaded: LoadedModel, record: ImagePreprocessing, where: str) -> LoadedModel:
    """``loaded`` with the preprocessing prepended, saved to a temporary folder that lives as long as
    the returned model (the reference runs it from a file). The signature keeps the source file's
    digest, size and name: the model is a function of the source and gpux.yml, both recorded."""
    try:
        proto = infer_shapes(prepend_image_preprocessing(loaded.proto, record))
    except ModelError as exc:
        raise type(exc)(f"{where}: {exc.message}", hint=exc.hint) from None
    workdir = tempfile.mkdtemp(prefix="gpuxc-pre-")
    path = Path(workdir) / loaded.path.name
    external = save_model(proto, path)
    source = loaded.signature
    signature = describe(proto, sha256=source.sha256, size_bytes=source.size_bytes, external=external)
    prepended = LoadedModel(proto=proto, path=path, signature=signature, upgrade=loaded.upgrade)
    weakref.finalize(prepended, shutil.rmtree, workdir, True)  # also at exit; no ResourceWarning
    return prepended


def prepend_image_preprocessing(model: ModelProto, record: ImagePreprocessing) -> ModelProto:
    """A copy of ``model`` whose input ``record.feeds`` is computed from uint8 pixels ``record.input``."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelError(f"image preprocessing needs a model at opset {MIN_OPSET} or later; this one is opset {opset}",
                         hint="re-export the model at a newer opset (17 is widely supported)")  # fmt: skip
    out = ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    position, fed = next((i, v) for i, v in enumerate(graph.input) if v.name == record.feeds)
    builder = _Builder(opset, record)
    if record.input == record.feeds:  # pixels take the input's name: the model reads the result under another
        _rename_uses(graph, record.feeds, builder.output)
    nodes = builder.build(fed)
    pixel_input = helper.make_tensor_value_info(record.input, TensorProto.UINT8, builder.input_shape(fed))
    del graph.input[position]
    graph.input.insert(position, pixel_input)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)
    graph.initializer.extend(builder.constants)
    # The fed tensor is now computed: its old value_info (if any) stays valid, its input entry is gone.
    return out


class _Builder:
    """Emits the preprocessing nodes in order; ``self.constants`` holds their initializers."""

    def __init__(self, opset: int, record: ImagePreprocessing) -> None:
        self.opset = opset
        self.record = record
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[TensorProto] = []
        # The name the model reads: the replaced input's, unless the pixels took it.
        self.output = record.feeds if record.input != record.feeds else f"{PREFIX}{record.feeds}"

    def input_shape(self, fed: onnx.ValueInfoProto) -> list[int | str | None]:
        dims = fed.type.tensor_type.shape.dim
        r = self.record
        batch: int | str | None = _dim(dims[0]) if dims else None
        if r.size is not None:
            height: int | str | None = "image_height"
            width: int | str | None = "image_width"
        else:  # no resize: the model's own spatial dims
            h_axis, w_axis = (2, 3) if r.layout == "nchw" else (1, 2)
            height, width = _dim(dims[h_axis]), _dim(dims[w_axis])
        return [batch if batch is not None else "batch", height, width, r.channel_count]

    def build(self, fed: onnx.ValueInfoProto) -> list[onnx.NodeProto]:
        r = self.record
        x = self.node("Cast", [r.input], "cast", to=TensorProto.FLOAT)
        x = self.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
        if r.size is not None:
            x = self.resize(x)
        if r.channels == "bgr":
            x = self.node("Gather", [x, self.const("bgr_order", np.array([2, 1, 0], np.int64))], "rgb_to_bgr", axis=1)
        # (x / scale - mean) / std == x * (1 / (scale * std)) + (-mean / std)
        mean, std = np.array(r.mean, np.float64), np.array(r.std, np.float64)
        shape = (1, r.channel_count, 1, 1)
        mul = (1.0 / (r.scale * std)).astype(np.float32).reshape(shape)
        add = (-mean / std).astype(np.float32).reshape(shape)
        x = self.node("Mul", [x, self.const("norm_mul", mul)], "normalize_scale")
        x = self.node("Add", [x, self.const("norm_add", add)], "normalize_shift")
        if r.layout == "nhwc":
            x = self.node("Transpose", [x], "to_nhwc", perm=[0, 2, 3, 1])
        target = _FLOAT_TYPES.get(r.dtype, TensorProto.FLOAT)
        if target != TensorProto.FLOAT:
            x = self.node("Cast", [x], "to_model_dtype", to=target)
        self.nodes.append(helper.make_node("Identity", [x], [self.output], name=f"{PREFIX}output"))
        return self.nodes

    # -- resize -----------------------------------------------------------------------------

    def resize(self, x: str) -> str:
        r = self.record
        assert r.size is not None
        target = np.array([r.size[1], r.size[0]], np.int64)  # [height, width]
        shape = self.node("Shape", [x], "shape")
        nc = self.slice(shape, 0, 2, "nc")
        if r.resize_mode == "stretch":
            sizes = self.node("Concat", [nc, self.const("size", target)], "sizes", axis=0)
            return self.resize_to(x, sizes)
        hw = self.node("Cast", [self.slice(shape, 2, 4, "hw")], "hw_float", to=TensorProto.FLOAT)
        ratio = self.node("Div", [self.const("size_float", target.astype(np.float32)), hw], "ratio")
        pick = "Min" if r.resize_mode == "letterbox" else "Max"
        scale = self.node(pick, [self.slice(ratio, 0, 1, "ratio_h"), self.slice(ratio, 1, 2, "ratio_w")], "scale")
        scaled = self.node("Round", [self.node("Mul", [hw, scale], "scaled_float")], "scaled_round")
        scaled = self.node("Cast", [scaled], "scaled", to=TensorProto.INT64)
        # Rounding can overshoot or undershoot the target by one pixel: clamp to it.
        bound = "Min" if r.resize_mode == "letterbox" else "Max"
        scaled = self.node(bound, [scaled, self.const("size_bound", target)], "scaled_clamped")
        x = self.resize_to(x, self.node("Concat", [nc, scaled], "sizes", axis=0))
        if r.resize_mode == "letterbox":
            return self.pad(x, scaled, target)
        return self.crop(x, scaled, target)

    def resize_to(self, x: str, sizes: str) -> str:
        empty = "" if self.opset >= 13 else self.const("empty", np.zeros(0, np.float32))
        return self.node("Resize", [x, empty, empty, sizes], "resize", mode="linear",
                         coordinate_transformation_mode="half_pixel")  # fmt: skip

    def pad(self, x: str, scaled: str, target: np.ndarray) -> str:
        """Centre the resized image on a ``target``-sized canvas of ``pad_value``."""
        total = self.node("Sub", [self.const("pad_size", target), scaled], "pad_total")
        before = self.node("Div", [total, self.const("two", np.array([2, 2], np.int64))], "pad_before")
        after = self.node("Sub", [total, before], "pad_after")
        zeros = self.const("pad_zeros", np.zeros(2, np.int64))
        pads = self.node("Concat", [zeros, before, zeros, after], "pads", axis=0)
        value = self.const("pad_value", np.array(float(self.record.pad_value), np.float32))
        return self.node("Pad", [x, pads, value], "letterbox", mode="constant")

    def crop(self, x: str, scaled: str, target: np.ndarray) -> str:
        """The ``target``-sized centre of the resized image."""
        offset = self.node("Div", [self.node("Sub", [scaled, self.const("crop_size", target)], "crop_extra"),
                                   self.const("half", np.array([2, 2], np.int64))], "crop_start")  # fmt: skip
        end = self.node("Add", [offset, self.const("crop_len", target)], "crop_end")
        return self.node("Slice", [x, offset, end, self.const("crop_axes", np.array([2, 3], np.int64))], "crop")

    # -- helpers ----------------------------------------------------------------------------

    def slice(self, x: str, start: int, end: int, step: str) -> str:
        starts = self.const(f"{step}_start", np.array([start], np.int64))
        ends = self.const(f"{step}_end", np.array([end], np.int64))
        return self.node("Slice", [x, starts, ends], step)

    def node(self, op: str, inputs: list[str], step: str, **attrs: Any) -> str:
        name = f"{PREFIX}{step}"
        if any(n.name == name for n in self.nodes):
            name = f"{name}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(self, step: str, value: np.ndarray) -> str:
        name = f"{PREFIX}{step}"
        self.constants.append(numpy_helper.from_array(value, name))
        return name


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every read of ``old`` in ``graph`` and its subgraphs (which may read outer names) becomes ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                if not any(v.name == old for v in sub.input):  # a subgraph input of that name shadows it
                    _rename_uses(sub, old, new)
    for value in graph.value_info:
        if value.name == old:
            value.name = new


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return dim.dim_param
    return None
