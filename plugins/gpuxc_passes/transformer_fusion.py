"""``transformer-fusion``: ONNX Runtime's transformer optimizer (attention, LayerNorm, GELU fusion).

``onnxruntime.transformers.optimizer.optimize_model`` rewrites the subgraphs an exporter
writes for a BERT-class encoder into ``com.microsoft`` contrib ops: ``Attention`` (Q/K/V
MatMuls, heads, softmax and mask in one op), ``EmbedLayerNormalization``,
``SkipLayerNormalization`` (residual Add + LayerNorm), ``BiasGelu``. ONNX Runtime's own
EXTENDED level does not fuse attention on CPU (it stops at FusedMatMul, BiasGelu and
LayerNormalization), so this pass does what load-time optimization cannot. The ops exist
only in ONNX Runtime's CPU and CUDA providers: OpenVINO, TensorRT and CoreML must never get them.

The pass runs only the Python fusions (``opt_level=0``): ONNX Runtime's own level is the
target's ``ort-optimize``, planned after it. The mask stays a 2-D 0/1 attention mask
(``AttentionMaskFormat.AttentionMask``): the optimizer's BERT default turns it into an
end-of-sequence index, which is only right for right-padded batches.

Nothing fused: skipped with the reason. The result is checked against the input model on
generated inputs, once with every token attended and once with the last quarter of each
sequence masked off (padding), at the fp32 tolerance; a difference fails the pass.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from onnx import ModelProto
from pydantic import Field

from gpuxc.errors import PassError
from gpuxc.passes import Pass, PassConfig, PassContext, PassResult, PassSkipped
from gpuxc.project.config_preprocessing import MASK_RE
from gpuxc_passes._common import check_inputs, check_outputs, is_large, op_diff, reason, run_model, summary

# The optimizer's statistics, as op names; the ones worth a line in the manifest when non-zero.
FUSIONS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "Gelu", "FastGelu", "BiasGelu",
           "GemmFastGelu", "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
           "SkipSimplifiedLayerNormalization", "RotaryEmbedding")  # fmt: skip


class TransformerFusionConfig(PassConfig):
    model_type: Literal["bert"] = "bert"
    """Optimizer model type (its fusion patterns): BERT-class encoders (BERT, RoBERTa, MiniLM, DistilBERT exports)."""
    num_heads: Annotated[int, Field(ge=0)] = 0
    """Attention heads; 0: detected from the graph (the Reshape to heads)."""
    hidden_size: Annotated[int, Field(ge=0)] = 0
    """Hidden size; 0: detected from the graph."""
    check: bool = True
    """Compare the fused model with the input model on generated inputs (all tokens, then padded)."""
    check_shapes: dict[str, list[int]] = {}
    """Input name -> full shape for the check; unknown dims not given take small values."""


class TransformerFusion(Pass[TransformerFusionConfig]):
    name = "transformer-fusion"
    description = "ONNX Runtime transformer optimizer: Attention, SkipLayerNormalization, BiasGelu fusion (CPU/CUDA)"
    Config = TransformerFusionConfig

    def why_skip(self, model: ModelProto) -> str | None:
        if is_large(model):
            return "the transformer optimizer works on the in-memory model, which cannot exceed 2 GB"
        if not has_attention(model):
            return "no attention (MatMul -> Softmax -> MatMul) in the graph"
        return None

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions(self.config.model_type)
        options.attention_mask_format = AttentionMaskFormat.AttentionMask
        work = ModelProto()
        work.CopyFrom(model)
        with quiet_optimizer() as messages:
            try:
                optimized = optimize_model(work, model_type=self.config.model_type, num_heads=self.config.num_heads,
                                           hidden_size=self.config.hidden_size, optimization_options=options,
                                           opt_level=0, use_gpu=False)  # fmt: skip
                counts = optimized.get_fused_operator_statistics()
            except Exception as exc:
                raise PassError(f"ONNX Runtime's transformer optimizer failed: {reason(exc)}") from None
        fused = {op: int(counts.get(op, 0)) for op in FUSIONS if counts.get(op, 0)}
        result = optimized.model
        if not any(n.domain == "com.microsoft" for n in result.graph.node):
            # Plain LayerNormalization rebuilt from a decomposed one is not worth a contrib-op model.
            raise PassSkipped("no transformer subgraph matched (attention, skip LayerNorm, GELU)" + _why(messages))
        stats: dict[str, Any] = {"fused": fused, **op_diff(model, result)}
        if "Attention" not in fused and "MultiHeadAttention" not in fused:
            stats["attention"] = "not fused" + _why(messages)
        if messages:
            stats["optimizer_messages"] = messages[:20]
        if self.config.check:
            stats["check"] = self._check(model, result, ctx)
        return PassResult(model=result, modified=True, stats=stats)

    def _check(self, model: ModelProto, fused: ModelProto, ctx: PassContext) -> dict[str, Any]:
        inputs, expected = check_inputs(model, self.config.check_shapes, ctx)
        samples = [(inputs, expected)]
        padded = _padded(inputs)
        if padded is not None:
            samples.append((padded, run_model(model, padded, ctx.workdir, "source")))
        worst: dict[str, Any] = {}
        for feeds, want in samples:
            try:
                got = run_model(fused, feeds, ctx.workdir, "fused")
            except Exception as exc:
                raise PassError(f"the fused model does not run in ONNX Runtime CPU: {reason(exc)}") from None
            result = summary(check_outputs(want, got, "fp32"))
            if result["status"] != "passed":
                what = "with padding masked off" if feeds is padded else "on generated inputs"
                raise PassError(f"the fused model's outputs differ from the input model's {what} "
                                f"(cosine {result.get('min_cosine')}, max abs {result.get('max_abs')})")  # fmt: skip
            if not worst or result.get("min_cosine", 1) < worst.get("min_cosine", 1):
                worst = result
        return {"shapes": {k: list(v.shape) for k, v in inputs.items()}, "padded": padded is not None, **worst}


# Ops allowed between the scores MatMul and the Softmax (scale, mask) and between Softmax and the
# MatMul by V (casts, dropout), as exporters write them.
_SCORE_OPS = {"Add", "Div", "Mul", "Sub", "Where", "Cast", "Reshape"}
_PROB_OPS = {"Cast", "Dropout", "Identity"}


def has_attention(model: ModelProto) -> bool:
    """Whether the main graph has MatMul -> (scale, mask) -> Softmax -> MatMul, the core of attention."""
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def from_matmul(name: str, depth: int) -> bool:
        node = producer.get(name)
        if node is None or depth > 4:
            return False
        if node.op_type == "MatMul":
            return True
        return node.op_type in _SCORE_OPS and any(from_matmul(i, depth + 1) for i in node.input)

    def to_matmul(name: str, depth: int) -> bool:
        for node in consumers.get(name, []):
            if node.op_type == "MatMul":
                return True
            if node.op_type in _PROB_OPS and depth < 2 and to_matmul(node.output[0], depth + 1):
                return True
        return False

    return any(n.op_type == "Softmax" and from_matmul(n.input[0], 0) and to_matmul(n.output[0], 0)
               for n in model.graph.node)  # fmt: skip


def _padded(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """``inputs`` with the last quarter of every row of each attention-mask input set to 0 (right padding)."""
    masks = [k for k, v in inputs.items() if MASK_RE.search(k) and v.ndim == 2 and v.shape[1] >= 2]
    if not masks:
        return None
    out = dict(inputs)
    for name in masks:
        mask = inputs[name].copy()
        mask[:, mask.shape[1] - max(1, mask.shape[1] // 4) :] = 0
        out[name] = mask
    return out


def _why(messages: list[str]) -> str:
    return f" ({messages[0]})" if messages else ""


@contextlib.contextmanager
def quiet_optimizer() -> Iterator[list[str]]:
    """Collect what ONNX Runtime's transformer modules log (warnings such as "Failed to detect
    num_heads") instead of letting it reach the console; yields the distinct messages."""
    import onnxruntime.transformers as package

    modules = {p.stem for p in Path(package.__file__).parent.glob("*.py")}
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage().strip()
            first = text.splitlines()[0][:300] if text else ""
            if record.levelno >= logging.WARNING and first and first not in messages:
                messages.append(first)

    # The package imports its modules both as onnxruntime.transformers.* and by bare name.
    names = [n for n in logging.root.manager.loggerDict if n.startswith("onnxruntime.transformers") or n in modules]
    handler = Collect()
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate, logger.level))
        logger.propagate = False
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.WARNING:  # another library raised the root's level
            logger.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        for logger, propagate, level in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate
            logger.setLevel(level)
