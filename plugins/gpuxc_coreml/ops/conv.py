"""Convolution, transposed convolution, pooling and spatial resizing (NCHW)."""

from __future__ import annotations

from typing import Any

import onnx

from gpuxc_coreml.graph import Graph, Untranslatable, Var, attrs, opt, pad_pairs, text, translates

AUTO_PAD = {"VALID": "valid", "SAME_UPPER": "same", "SAME_LOWER": "same_lower"}


def padding(a: dict[str, Any], spatial: int) -> tuple[str, list[int] | None]:
    """MIL ``pad_type`` and, for explicit pads, the per-axis ``pad`` pairs of a Conv or pool node."""
    auto_pad = text(a.get("auto_pad", b"NOTSET"))
    if auto_pad != "NOTSET":
        return AUTO_PAD[auto_pad], None
    return "custom", pad_pairs(list(a.get("pads", [0] * 2 * spatial)), spatial)


def conv_kwargs(node: onnx.NodeProto, g: Graph) -> dict[str, Any]:
    """What Conv and ConvTranspose share: input, weight, strides, dilations, groups, pads, bias."""
    a = attrs(node)
    weight = g.var(node.input[1])
    spatial = len(weight.shape) - 2
    kwargs: dict[str, Any] = {
        "x": g.var(node.input[0]),
        "weight": weight,
        "strides": list(a.get("strides", [1] * spatial)),
        "dilations": list(a.get("dilations", [1] * spatial)),
        "groups": int(a.get("group", 1)),
        "name": node.output[0],
    }
    # Keyword order matters: coremltools makes the consts of an op's literal arguments in that order.
    kwargs["pad_type"], pad = padding(a, spatial)
    if pad is not None:
        kwargs["pad"] = pad
    if opt(node, 2):
        kwargs["bias"] = g.var(node.input[2])
    return kwargs


@translates("Conv", note="pads, strides, dilations, group, auto_pad; weights may be runtime tensors")
def conv(node: onnx.NodeProto, g: Graph) -> list[Var]:
    return [g.mb.conv(**conv_kwargs(node, g))]


@translates("ConvTranspose", note="no output_shape/output_padding")
def conv_transpose(node: onnx.NodeProto, g: Graph) -> list[Var]:
    a = attrs(node)
    if "output_shape" in a or any(int(p) for p in a.get("output_padding", [])):
        raise Untranslatable(f"ConvTranspose '{node.name}': output_shape/output_padding are not supported")
    kwargs = conv_kwargs(node, g)
    if kwargs["pad_type"] != "custom":
        raise Untranslatable(f"ConvTranspose '{node.name}': auto_pad is not supported")
    return [g.mb.conv_transpose(**kwargs)]


def pool_args(node: onnx.NodeProto, spatial: int) -> dict[str, Any]:
    a = attrs(node)
    kernel = list(a["kernel_shape"])
    pad_type, pad = padding(a, spatial)
    if any(d != 1 for d in a.get("dilations", [1] * spatial)):
        raise Untranslatable(f"{node.op_type} '{node.name}': dilated pooling")
    extra = {} if pad is None else {"pad": pad}
    return {"kernel_sizes": kernel, "strides": list(a.get("strides", [1] * spatial)), "pad_type": pad_type,
            "ceil_mode": bool(a.get("ceil_mode", 0)), **extra}  # fmt: skip


@translates("MaxPool", note="no Indices output, no dilations")
def max_pool(node: onnx.NodeProto, g: Graph) -> list[Var]:
    if len(node.output) > 1 and node.output[1]:
        raise Untranslatable(f"MaxPool '{node.name}': the Indices output")
    x = g.var(node.input[0])
    return [g.mb.max_pool(x=x, name=node.output[0], **pool_args(node, len(x.shape) - 2))]


@translates("AveragePool", note="no dilations")
def avg_pool(node: onnx.NodeProto, g: Graph) -> list[Var]:
    x = g.var(node.input[0])
    exclude = not bool(attrs(node).get("count_include_pad", 0))
    return [g.mb.avg_pool(x=x, exclude_padding_from_average=exclude, name=node.output[0],
                          **pool_args(node, len(x.shape) - 2))]  # fmt: skip


@translates("GlobalAveragePool", "GlobalMaxPool")
def global_pool(node: onnx.NodeProto, g: Graph) -> list[Var]:
    x = g.var(node.input[0])
    axes = list(range(2, len(x.shape)))
    reduce = g.mb.reduce_mean if node.op_type == "GlobalAveragePool" else g.mb.reduce_max
    return [reduce(x=x, axes=axes, keep_dims=True, name=node.output[0])]


def resize_scales(node: onnx.NodeProto, g: Graph, shape: list[int]) -> list[float] | None:
    """Scales from input 'scales' (Upsample: input 1; Resize: input 2) or target 'sizes' (Resize input 3)."""
    if node.op_type == "Upsample":
        return [float(v) for v in g.need_const(node, 1, "scales").reshape(-1)]
    scales = g.const(node.input[2]) if opt(node, 2) else None
    if scales is not None and scales.size:
        return [float(v) for v in scales.reshape(-1)]
    if opt(node, 3):
        sizes = g.need_ints(node, 3, "sizes")
        return [s / d for s, d in zip(sizes, shape, strict=True)]
    return None


# ONNX coordinate_transformation_mode -> resize_bilinear's sampling_mode (the same grid points;
# pytorch_half_pixel differs from half_pixel only for an output of size 1).
LINEAR_SAMPLING = {"half_pixel": "UNALIGN_CORNERS", "align_corners": "STRICT_ALIGN_CORNERS", "asymmetric": "DEFAULT"}


@translates("Resize", note="4-D NCHW, constant scales or sizes on H/W only; nearest or linear (sizes: exact)")
@translates("Upsample", note="as Resize")
def resize(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    if len(shape) != 4:
        raise Untranslatable(f"{node.op_type} '{node.name}': only 4-D NCHW inputs are supported")
    a = attrs(node)
    mode = text(a.get("mode", b"nearest"))
    scales = resize_scales(node, g, shape)
    if scales is None or scales[0] != 1 or scales[1] != 1:
        raise Untranslatable(f"{node.op_type} '{node.name}': needs constant spatial scales or sizes")
    x = g.var(node.input[0])
    if mode == "nearest":
        return [g.mb.upsample_nearest_neighbor(x=x, scale_factor_height=scales[2], scale_factor_width=scales[3],
                                               name=node.output[0])]  # fmt: skip
    if mode == "linear":
        transform = text(a.get("coordinate_transformation_mode", b"half_pixel"))
        given = g.const(node.input[2]) if node.op_type == "Resize" and opt(node, 2) else None
        if node.op_type == "Resize" and opt(node, 3) and (given is None or not given.size):
            # Target sizes (image preprocessing's resize): exact output sizes. upsample_bilinear's
            # floor(in * (out / in)) can land one pixel short for sizes like 13 -> 8.
            sizes = g.need_ints(node, 3, "sizes")
            sampling = LINEAR_SAMPLING.get(transform)
            if sampling is None:
                raise Untranslatable(f"Resize '{node.name}': coordinate_transformation_mode '{transform}' with sizes")
            return [g.mb.resize_bilinear(x=x, target_size_height=sizes[2], target_size_width=sizes[3],
                                         sampling_mode=sampling, name=node.output[0])]  # fmt: skip
        align = transform == "align_corners"
        return [g.mb.upsample_bilinear(x=x, scale_factor_height=scales[2], scale_factor_width=scales[3],
                                       align_corners=align, name=node.output[0])]  # fmt: skip
    raise Untranslatable(f"{node.op_type} '{node.name}': mode '{mode}' is not supported")
