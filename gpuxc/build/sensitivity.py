"""Layer sensitivity: which nodes of a lossy variant lose the accuracy, ranked.

The lossy model (int8 QDQ, fp16) keeps the fp32 model's node and tensor names: quantizers and
converters insert QuantizeLinear/DequantizeLinear or Cast nodes around the originals. Both
models run on the same inputs with every compared tensor made a graph output (as ONNX Runtime's
``qdq_loss_debug`` and Polygraphy's layer-wise compare do), and each tensor's relative error
``||lossy - fp32|| / ||fp32||`` is summed over the inputs.

A node's *own* contribution is the error of its output minus the largest error already on its
inputs: a node downstream of a damaged one inherits the damage, which is not its fault. Nodes are
ranked by that contribution; the precision repair (gpuxc/build/repair.py) keeps the top ones in
higher precision. Both models run on ONNX Runtime with its optimizations off, so every named
tensor exists; a QDQ model then computes in float what the integer kernels compute, which ranks the
same nodes (the ranking is what is used, not the values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, ValueInfoProto

from gpuxc.ort_session import run_onnxruntime

# Ops ranked: those ONNX Runtime's quantizers lower by default, and what the fp16 converter
# lowers with them; a repair keeps the top ones back by name.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "Einsum",
                         "Softmax", "LayerNormalization", "Resize"})  # fmt: skip
# Nodes recorded in the manifest.
RECORDED = 20


@dataclass
class NodeSensitivity:
    node: str
    op_type: str
    output: str
    error: float  # relative error of the node's output in the lossy model
    contribution: float  # error minus the largest error already on its inputs

    def to_json(self) -> dict[str, object]:
        return {"node": self.node, "op_type": self.op_type, "error": _round(self.error),
                "contribution": _round(self.contribution)}  # fmt: skip


def rank_nodes(reference: ModelProto, lossy: ModelProto,
               feeds: Iterable[dict[str, np.ndarray]]) -> list[NodeSensitivity]:  # fmt: skip
    """The compute nodes of ``reference`` that ``lossy`` also has, most damaging first."""
    # Matched by output tensor: quantizers rename the nodes they replace (dynamic int8 turns MatMul
    # into MatMulInteger) but keep the tensor names, or the graph would fall apart; the reference
    # node's name is what nodes_to_exclude / node_block_list take.
    lossy_names = {out for n in lossy.graph.node for out in n.output}
    nodes = [n for n in reference.graph.node
             if n.name and n.op_type in COMPUTE_OPS and n.output and n.output[0] in lossy_names]  # fmt: skip
    if not nodes:
        return []
    produced = {out for n in reference.graph.node for out in n.output}
    tensors = sorted({n.output[0] for n in nodes} | {i for n in nodes for i in n.input if i in produced})
    tensors = [t for t in tensors if t in lossy_names]
    errors = RelativeErrors()
    ref_model, lossy_model = _with_outputs(reference, tensors), _with_outputs(lossy, tensors)
    for feed in feeds:
        want = run_onnxruntime(ref_model.SerializeToString(), feed, level="none", log_level=4)
        got = run_onnxruntime(lossy_model.SerializeToString(), feed, level="none", log_level=4)
        for name in tensors:
            errors.add(name, want.get(name), got.get(name))
    return rank_by_error([(n.name, n.op_type, n.output[0], list(n.input)) for n in nodes], errors.errors())


class RelativeErrors:
    """``||lossy - fp32|| / ||fp32||`` per tensor, summed over the inputs; ``centred``: relative to
    ``||fp32 - mean(fp32)||``, the tensor's variation. A rounding error the size of 0.4% of a large
    common offset is harmless in norm and ruinous once a later op subtracts the offset (bf16 on a
    MatMul whose weights share one: tests/plugins/gpuxc_openvino/test_precision.py)."""

    def __init__(self, centred: bool = False) -> None:
        self.centred = centred
        self.squared: dict[str, float] = {}
        self.norms: dict[str, float] = {}

    def add(self, name: str, want: object, got: object) -> None:
        r, g = _floats(want), _floats(got)
        if r is None or g is None or r.shape != g.shape:
            return
        self.squared[name] = self.squared.get(name, 0.0) + float(np.sum((g - r) ** 2))
        base = r - r.mean() if self.centred and r.size > 1 else r
        self.norms[name] = self.norms.get(name, 0.0) + float(np.sum(base**2))

    def errors(self) -> dict[str, float]:
        return {t: math.sqrt(self.squared[t]) / (math.sqrt(self.norms[t]) + 1e-12) for t in self.squared}


def rank_by_error(nodes: list[tuple[str, str, str, list[str]]], error: dict[str, float]) -> list[NodeSensitivity]:
    """``nodes`` as (name, op type, output, inputs) ranked by their own contribution: the error of
    their output minus the largest error on their inputs, most damaging first."""
    ranked = []
    for name, op_type, out, inputs in nodes:
        if out not in error:
            continue
        inherited = max((error[i] for i in inputs if i in error), default=0.0)
        ranked.append(NodeSensitivity(name, op_type, out, error[out], max(error[out] - inherited, 0.0)))
    ranked.sort(key=lambda s: (-s.contribution, -s.error, s.node))
    return ranked


def _with_outputs(model: ModelProto, tensors: list[str]) -> ModelProto:
    out = ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    # Untyped outputs are enough for ONNX Runtime, which infers their types.
    out.graph.output.extend(ValueInfoProto(name=t) for t in tensors if t not in existing)
    return out


def _floats(value: object) -> np.ndarray | None:
    if value is None or not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        return None
    array = value.astype(np.float64)
    return np.where(np.isfinite(array), array, 0.0)


def _round(value: float) -> float:
    return float(f"{value:.4g}")
