"""``quantize-dynamic``: int8 weights, activations quantized at run time (ONNX Runtime's ``quantize_dynamic``).

Only ``MatMul``/``Gemm`` by default, per channel: on this kind of CPU that is the useful
kind for transformers (about 3x faster on a MiniLM-class model, cosine about 0.99), while
ONNX Runtime's own default also turns ``Conv`` into ``ConvInteger``, which measured 3-5x
*slower* on CNNs and broke accuracy on several (cosine 0.17-0.84) (FIELD_NOTES).

Weights must be initializers: plan ``fold-constants`` first for exports that keep them in
``Constant`` nodes. A model with no such node is skipped before anything runs.

A node kept in float (``nodes_to_exclude``) takes the other quantizable nodes that read the same
activation with it (a transformer's Q, K and V projections): ONNX Runtime 1.32 quantizes a shared
activation once, and leaving one of its readers in float made a model ONNX Runtime could not load
("AddInitializedOrtValue Attempt to replace the existing tensor", seen on MiniLM with fixed shapes).
"""

from __future__ import annotations

from typing import Any, Literal

import onnx
from onnx import GraphProto, ModelProto, TensorProto

from gpuxc.passes import Pass, PassConfig, PassContext, PassResult, PassSkipped
from gpuxc.project.model import save_model
from gpuxc_passes._common import for_per_channel, is_large, op_counts, op_diff, quiet_quantizer, subgraphs

# Which input holds the weight, per op type (other op types: any float initializer input).
WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1, "Gather": 0, "EmbedLayerNormalization": 2}
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


class QuantizeDynamicConfig(PassConfig):
    op_types: list[str] = ["MatMul", "Gemm"]
    """Op types to quantize. Adding Conv makes ConvInteger, which is slow and lossy on CPU (see above)."""
    per_channel: bool = True
    """One scale per output channel of each weight (per-tensor loses too much: cosine ~0.95 on transformers)."""
    reduce_range: bool = False
    """7-bit weights, for CPUs without VNNI where 8-bit U8S8 products can saturate."""
    weight_type: Literal["qint8", "quint8"] = "qint8"
    """Weight integer type (signed int8 is what ONNX Runtime's x86 kernels expect)."""
    nodes_to_exclude: list[str] = []
    """Node names left in float (e.g. the classifier head, when it costs accuracy)."""
    extra_options: dict[str, Any] = {}
    """Passed unchanged to onnxruntime.quantization.quantize_dynamic (e.g. MatMulConstBOnly)."""


class QuantizeDynamic(Pass[QuantizeDynamicConfig]):
    name = "quantize-dynamic"
    description = "dynamic int8 quantization of MatMul/Gemm weights (ONNX Runtime)"
    Config = QuantizeDynamicConfig

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        excluded = with_siblings(model, self.config.op_types, self.config.nodes_to_exclude)
        candidates = quantizable_nodes(model, self.config.op_types, excluded)
        if not candidates:
            raise PassSkipped(f"no {'/'.join(self.config.op_types)} with initializer weights to quantize")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        src = ctx.workdir / "quantize-dynamic-in.onnx"
        dst = ctx.workdir / "quantize-dynamic-out.onnx"
        large = is_large(model)
        upgrade: dict[str, Any] = {}
        model = for_per_channel(model, self.config.per_channel, upgrade)
        save_model(model, src)
        with quiet_quantizer() as messages:
            quantize_dynamic(
                src,
                dst,
                op_types_to_quantize=list(self.config.op_types),
                per_channel=self.config.per_channel,
                reduce_range=self.config.reduce_range,
                weight_type=QuantType.QInt8 if self.config.weight_type == "qint8" else QuantType.QUInt8,
                nodes_to_exclude=excluded,
                use_external_data_format=large,
                extra_options=dict(self.config.extra_options),
            )
        quantized = onnx.load(str(dst))
        before, after = op_counts(model), op_counts(quantized)
        done = sum(max(before.get(op, 0) - after.get(op, 0), 0) for op in self.config.op_types)
        if done == 0:
            raise PassSkipped(f"ONNX Runtime quantized none of the {len(candidates)} candidate node(s)")
        stats: dict[str, Any] = {
            "candidates": len(candidates),
            "nodes_quantized": done,
            **op_diff(model, quantized),
            **upgrade,
        }
        if len(excluded) > len(self.config.nodes_to_exclude):
            stats["excluded_with_siblings"] = [n for n in excluded if n not in self.config.nodes_to_exclude]
        if messages:
            stats["quantizer_messages"] = messages[:20]
        return PassResult(model=quantized, modified=True, stats=stats)


def with_siblings(model: ModelProto, op_types: list[str], exclude: list[str]) -> list[str]:
    """``exclude`` plus the top-level ``op_types`` nodes that share a non-weight input with an excluded one."""
    if not exclude:
        return []
    weights = {t.name for t in model.graph.initializer}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in op_types and node.name:
            for name in node.input:
                if name and name not in weights:
                    readers.setdefault(name, []).append(node.name)
    out = list(dict.fromkeys(exclude))
    for node in model.graph.node:
        if node.name in exclude:
            for name in node.input:
                out += [n for n in readers.get(name, []) if n not in out]
    return out


def quantizable_nodes(model: ModelProto, op_types: list[str], exclude: list[str]) -> list[str]:
    """Names (or op types) of the nodes of ``op_types`` whose weight input is a float initializer."""
    wanted = set(op_types)
    skip = set(exclude)
    found: list[str] = []

    def walk(graph: GraphProto, outer: dict[str, TensorProto]) -> None:
        inits = {**outer, **{t.name: t for t in graph.initializer}}
        for node in graph.node:
            if node.op_type in wanted and node.name not in skip:
                index = WEIGHT_INPUT.get(node.op_type)
                names = [node.input[index]] if index is not None and index < len(node.input) else list(node.input)
                if any(n in inits and inits[n].data_type in FLOAT_TYPES for n in names):
                    found.append(node.name or node.op_type)
            for sub in subgraphs(node):
                walk(sub, inits)

    walk(model.graph, {})
    return found
