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

from gpuxc.passes import PassSpec

if TYPE_CHECKING:
    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature
    from gpuxc.targets import Variant

# Tensor-sequence ops: runtimes without a sequence type (OpenVINO, CoreML, TensorRT) need them
# folded away (the fold-sequences pass) when every position is known.
SEQUENCE_OPS = frozenset({"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceAt",
                          "SequenceLength", "ConcatFromSequence"})  # fmt: skip


def sequence_plan(signature: ModelSignature) -> list[PassSpec]:
    """``fold-sequences`` (not required: a model it cannot fold goes on unchanged) when the model has sequence ops."""
    if SEQUENCE_OPS.isdisjoint(signature.op_types):
        return []
    return [PassSpec("fold-sequences", {}, required=False)]


def onnx_plan(
    config: GpuxConfig,
    variant: Variant,
    level: str,
    providers: list[str],
    simplify: str = "off",
) -> list[PassSpec]:
    """Passes for an ONNX artifact at ``variant``'s precision; ``level`` is the fp32 optimization level."""
    specs: list[PassSpec] = []
    if config.build.shapes:
        specs.append(PassSpec("fix-shapes", {"shapes": config.build.shapes}))
    if simplify != "off":
        specs.append(PassSpec("simplify", {"backend": simplify}, required=False))
    precision = variant.precision
    if precision == "fp32":
        if level != "none":
            specs.append(PassSpec("ort-optimize", {"level": level, "providers": providers}))
        return specs
    specs.append(PassSpec("fold-constants", {}, required=False))
    specs.append(PassSpec("ort-optimize", {"level": "basic", "providers": providers}))
    if precision == "fp16":
        specs.append(PassSpec("fp16", {"keep_io_types": True}))
    elif precision == "int8-dynamic":
        specs.append(PassSpec("quantize-dynamic", {"op_types": ["MatMul", "Gemm"], "per_channel": True}))
    elif precision == "int8-static":
        specs.append(PassSpec("quantize-static", calibration_params(config)))
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
