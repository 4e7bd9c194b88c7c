"""Ops that select, join, split, repeat or pad tensor data."""

from __future__ import annotations

import numpy as np
import onnx

from gpuxc_coreml.graph import Graph, Untranslatable, Var, attrs, norm_axis, opt, pad_pairs, text, translates


@translates("Concat")
def concat(node: onnx.NodeProto, g: Graph) -> list[Var]:
    values = [g.var(n) for n in node.input if n]
    return [g.mb.concat(values=values, axis=int(attrs(node)["axis"]), name=node.output[0])]


@translates("Split", note="constant split sizes (input or attribute), or equal parts")
def split(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    a = attrs(node)
    axis = norm_axis(int(a.get("axis", 0)), len(shape))
    if opt(node, 1):
        sizes = g.need_ints(node, 1, "split sizes")
    elif "split" in a:
        sizes = [int(v) for v in a["split"]]
    else:
        parts = len(node.output)
        size = -(-shape[axis] // parts)  # ceil, as ONNX: the last part may be smaller
        sizes = [min(size, shape[axis] - i * size) for i in range(parts)]
    outs = g.mb.split(x=g.var(node.input[0]), split_sizes=sizes, axis=axis, name=node.output[0] + "_split")
    return [g.mb.identity(x=o, name=n) for o, n in zip(outs, node.output, strict=True)]


@translates("Gather", note="negative constant indices resolved here; runtime indices must be non-negative")
def gather(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    axis = norm_axis(int(attrs(node).get("axis", 0)), len(shape))
    indices = g.const(node.input[1])
    if indices is None:
        return [g.mb.gather(x=g.var(node.input[0]), indices=g.var(node.input[1]), axis=axis, name=node.output[0])]
    # Negative indices count from the end in ONNX; resolve them here where the dim is known.
    indices = np.where(indices < 0, indices + shape[axis], indices).astype(np.int32)
    if indices.ndim == 0:
        picked = g.mb.gather(x=g.var(node.input[0]), indices=indices.reshape(1), axis=axis)
        return [g.mb.squeeze(x=picked, axes=[axis], name=node.output[0])]
    return [g.mb.gather(x=g.var(node.input[0]), indices=indices, axis=axis, name=node.output[0])]


@translates("Slice", note="constant starts/ends/axes/steps")
def slice_(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    rank = len(shape)
    a = attrs(node)
    if "starts" in a:  # opset < 10
        starts, ends = list(a["starts"]), list(a["ends"])
        axes, steps = list(a.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = g.need_ints(node, 1, "starts"), g.need_ints(node, 2, "ends")
        axes = g.need_ints(node, 3, "axes") if opt(node, 3) else list(range(len(starts)))
        steps = g.need_ints(node, 4, "steps") if opt(node, 4) else [1] * len(starts)
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    end_mask = [False] * rank
    for start, stop, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = norm_axis(int(axis), rank)
        # Python's slice clamps exactly as ONNX specifies, including INT64 sentinels.
        lo, hi, st = slice(int(start), int(stop), int(step)).indices(shape[axis])
        begin[axis], end[axis], stride[axis] = lo, hi, st
        if st < 0 and hi < 0:
            end_mask[axis] = True  # runs through index 0; an end of -1 would mean "the last element"
    return [g.mb.slice_by_index(x=g.var(node.input[0]), begin=begin, end=end, stride=stride, end_mask=end_mask,
                                name=node.output[0])]  # fmt: skip


@translates("Tile", note="constant repeats")
def tile(node: onnx.NodeProto, g: Graph) -> list[Var]:
    reps = g.need_ints(node, 1, "repeats")
    return [g.mb.tile(x=g.var(node.input[0]), reps=reps, name=node.output[0])]


@translates("Expand", note="constant target shape")
def expand(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    target = g.need_ints(node, 1, "shape")
    # Numpy-style broadcast of the two shapes, then tile the (rank-aligned) input to it.
    rank = max(len(shape), len(target))
    src = [1] * (rank - len(shape)) + shape
    dst = [1] * (rank - len(target)) + target
    out = [max(s, d) for s, d in zip(src, dst, strict=True)]
    x = g.var(node.input[0])
    if len(src) != len(shape):
        x = g.mb.reshape(x=x, shape=src)
    reps = [o // s if s else 1 for o, s in zip(out, src, strict=True)]
    return [g.mb.tile(x=x, reps=reps, name=node.output[0])]


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@translates("Pad", note="constant pads; modes constant, reflect, edge; no axes input")
def pad(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    a = attrs(node)
    mode = text(a.get("mode", b"constant"))
    pads = [int(v) for v in a["pads"]] if "pads" in a else g.need_ints(node, 1, "pads")
    value = float(a.get("value", 0.0))
    if opt(node, 2):
        value = float(g.need_const(node, 2, "constant value").reshape(-1)[0])
    if opt(node, 3):
        raise Untranslatable(f"Pad '{node.name}': the axes input is not supported")
    mil_mode = PAD_MODES.get(mode)
    if mil_mode is None:
        raise Untranslatable(f"Pad '{node.name}': mode '{mode}' is not supported")
    return [g.mb.pad(x=g.var(node.input[0]), pad=np.asarray(pad_pairs(pads, len(shape)), np.int32), mode=mil_mode,
                     constant_val=value, name=node.output[0])]  # fmt: skip


@translates("GatherElements", note="negative constant indices resolved here; runtime indices must be non-negative")
def gather_elements(node: onnx.NodeProto, g: Graph) -> list[Var]:
    shape = g.shape(node.input[0])
    axis = norm_axis(int(attrs(node).get("axis", 0)), len(shape))
    indices = g.const(node.input[1])
    if indices is None:
        index_var = g.var(node.input[1])
    else:
        index_var = np.where(indices < 0, indices + shape[axis], indices).astype(np.int32)
    return [g.mb.gather_along_axis(x=g.var(node.input[0]), indices=index_var, axis=axis, name=node.output[0])]
