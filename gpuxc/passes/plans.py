"""Pass plans shared by the ONNX-based targets (cpu, and later directml/cuda/tensorrt prep).

Order matters. Quantizers and converters must see real initializers, so
Constant-node weights are folded first. Quantized and fp16 variants are
optimized only at BASIC before conversion: EXTENDED fusions (FusedConv,
FusedMatMul, SkipLayerNormalization) are operators the quantizers do not know,
and ONNX Runtime applies its fusions, QDQ ones included, when the runner opens
the model anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuxc.errors import ConfigError
from gpuxc.passes import PassSpec

if TYPE_CHECKING:
    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature
    from gpuxc.targets import Variant

# Tensor-sequence ops: runtimes without a sequence type (OpenVINO, CoreML, TensorRT) need them
# folded away (the fold-sequences pass) when every position is known.
SEQUENCE_OPS = frozenset({"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceAt",
                          "SequenceLength", "ConcatFromSequence"})  # fmt: skip
# Ops every attention block has (QK^T, softmax, times V): transformer-fusion is planned for such models.
ATTENTION_OPS = frozenset({"MatMul", "Softmax"})


def fixed_shapes(config: GpuxConfig, signature: ModelSignature) -> dict[str, list[int]]:
    """The input shapes the artifact is specialised to: ``build.shapes``, plus every input gpux.yml
    declares with a fully static shape (``[1, 128]``; a ``-1``, ``null`` or a name keeps a dim
    dynamic) where the model leaves a dim open. Measured: an OpenVINO IR left ``[?, ?]`` ran a
    BERT-class encoder about 2x slower than the same IR at the declared shape. Not with
    ``serving.max_batch_size > 1``: the server batches along the first dim, which must stay open."""
    shapes = dict(config.build.shapes)
    if config.serving.batch_limit > 1:
        return shapes
    for spec in config.declared_inputs().values():
        tensor = signature.input(spec.name)
        if spec.name in shapes or tensor is None or tensor.shape is None or not spec.shape:
            continue
        static = all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in spec.shape)
        open_dims = any(not isinstance(d, int) or d < 0 for d in tensor.shape)
        if static and open_dims and len(spec.shape) == len(tensor.shape):
            shapes[spec.name] = [int(d) for d in spec.shape]  # type: ignore[arg-type]
    return shapes


def shapes_plan(config: GpuxConfig, signature: ModelSignature | None) -> list[PassSpec]:
    """``fix-shapes`` when any input is to be specialised (:func:`fixed_shapes`)."""
    shapes = fixed_shapes(config, signature) if signature is not None else dict(config.build.shapes)
    return [PassSpec("fix-shapes", {"shapes": shapes})] if shapes else []


def sequence_plan(signature: ModelSignature) -> list[PassSpec]:
    """``fold-sequences`` (not required: a model it cannot fold goes on unchanged) when the model has sequence ops."""
    if SEQUENCE_OPS.isdisjoint(signature.op_types):
        return []
    return [PassSpec("fold-sequences", {}, required=False)]


def fusion_plan(signature: ModelSignature | None) -> list[PassSpec]:
    """``transformer-fusion`` (optional; the pass itself looks for MatMul -> Softmax -> MatMul) when the
    model has the ops of attention. Opt-in (``build.options.cpu.transformer_fusion``): measured on
    all-MiniLM-L6-v2 (fixtures/minilm.py) on a 2-core x86-64 host, the fused model was no faster than
    ONNX Runtime's own EXTENDED optimization, which fuses no attention on CPU (docs/passes.md)."""
    if signature is None or not ATTENTION_OPS <= set(signature.op_types):
        return []
    return [PassSpec("transformer-fusion", {}, required=False)]


def onnx_plan(
    config: GpuxConfig,
    variant: Variant,
    level: str,
    providers: list[str],
    simplify: str = "off",
    signature: ModelSignature | None = None,
    contrib_ops: bool = False,
    fusion: bool = False,
) -> list[PassSpec]:
    """Passes for an ONNX artifact at ``variant``'s precision; ``level`` is the fp32 optimization level.
    With ``signature``, declared static input shapes specialise the artifact (:func:`fixed_shapes`).
    ``contrib_ops``: the runtime runs ONNX Runtime's ``com.microsoft`` ops (CPU), which int4 weights
    (MatMulNBits) and transformer fusion produce; ``fusion``: plan :func:`fusion_plan` for fp32 too."""
    specs: list[PassSpec] = shapes_plan(config, signature)
    if simplify != "off":
        specs.append(PassSpec("simplify", {"backend": simplify}, required=False))
    precision = variant.precision
    if precision == "fp32":
        if contrib_ops and fusion and level in ("extended", "all"):
            specs += fusion_plan(signature)
        if level != "none":
            specs.append(PassSpec("ort-optimize", {"level": level, "providers": providers}))
        return specs
    if precision == "int4-weights" and not contrib_ops:
        raise ConfigError(f"{config.where('build', 'precision')}: int4-weights (ONNX Runtime MatMulNBits) is "
                          "offered by the cpu and openvino targets only")  # fmt: skip
    specs.append(PassSpec("fold-constants", {}, required=False))
    specs.append(PassSpec("ort-optimize", {"level": "basic", "providers": providers}))
    if precision == "fp16":
        specs.append(PassSpec("fp16", {"keep_io_types": True}))
    elif precision == "int8-dynamic":
        specs.append(PassSpec("quantize-dynamic", {"op_types": ["MatMul", "Gemm"], "per_channel": True}))
    elif precision == "int8-static":
        specs.append(PassSpec("quantize-static", calibration_params(config)))
    elif precision == "int4-weights":
        specs.append(PassSpec("quantize-int4", {"block_size": 32, "symmetric": True, "accuracy_level": 4}))
    else:
        raise ValueError(f"no ONNX plan for precision {precision!r}")
    return specs


def calibration_params(config: GpuxConfig) -> dict[str, Any]:
    """quantize-static parameters from build.calibration (paths stay relative to gpux.yml)."""
    cal = config.build.calibration
    if cal is None:
        return {"seed": config.build.seed}
    return {
        "data": cal.data,
        "samples": cal.samples,
        "method": cal.method,
        "random": cal.random,
        "seed": config.build.seed,
    }


def has_calibration(config: GpuxConfig) -> bool:
    return config.build.calibration is not None
