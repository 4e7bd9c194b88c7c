"""``quantize-static``: int8 weights and activations, scales calibrated on representative inputs.

ONNX Runtime's ``quantize_static`` with a ``CalibrationDataReader`` over samples from
``data`` (the layouts of :mod:`gpuxc.project.calibration`: a folder of .npz/.npy files, one sample
each, or one .npz holding N samples per input; with a preprocessing block, a folder of images or
a .txt file, through the bundle's own preprocessing) or, only when asked with ``random: true``,
over generated inputs; a random calibration is a smoke test and says so in the manifest.

Defaults are what ONNX Runtime recommends for x86-64 CPUs: QDQ format, uint8 activations,
int8 weights (U8S8), per-channel weights (cosine about 0.9999 on CNNs here, FIELD_NOTES).

``preprocess`` runs ``quant_pre_process`` (ONNX Runtime optimization + shape inference)
first, with symbolic shape inference skipped because it fails on most real models. It is
off by default: targets run ``ort-optimize`` at BASIC before quantizing, which does the same
folding, and on the magika model the quantizer itself then failed inside ONNX Runtime. When
it is on and fails, or quantization fails after it, the pass goes on without it and records
that in the stats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import onnx
from onnx import ModelProto
from pydantic import Field, model_validator

from gpuxc.errors import PassError, first_line
from gpuxc.passes import Pass, PassConfig, PassContext, PassResult, PassSkipped
from gpuxc.project.graph import iter_nodes
from gpuxc.project.model import infer_shapes, save_model
from gpuxc_passes._common import (
    CALIBRATION_SIZES,
    for_per_channel,
    generated_inputs,
    has_float32,
    is_large,
    op_counts,
    op_diff,
    quiet_quantizer,
    signature_of,
)

NEEDS_DATA = (
    "static quantization needs calibration data: set build.calibration.data to a folder of .npz/.npy files "
    "(one sample each) or one .npz holding N samples per input, or build.calibration.random: true for a smoke test"
)
RANDOM_WARNING = "calibrated on random inputs: accuracy on real data is unknown"
# Fewer samples than this and the method's ranges rest on too little data (gpuxc's choice, said in
# docs/passes.md): min/max settles with a few batches; entropy and percentile build histograms.
MIN_SAMPLES = {"minmax": 4, "entropy": 32, "percentile": 32}
# Ops the quantizer adds: QDQ pairs, or QOperator's integer kernels.
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


class QuantizeStaticConfig(PassConfig):
    data: str | None = None
    """Calibration samples: a folder of .npz/.npy files or one .npz; with preprocessing, a folder of images or a .txt
    file (relative to gpux.yml's folder, or absolute)."""
    samples: Annotated[int, Field(ge=1)] = 32
    """How many samples to calibrate on (the first ones, in file-name order)."""
    random: bool = False
    """Calibrate on generated inputs instead of data: a smoke test, recorded as a warning."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the generated samples (random: true); they never equal the reference inputs."""
    shapes: dict[str, list[int]] = {}
    """Input name -> full shape of the generated samples; unknown dims not given take the reference's defaults."""
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    """Calibration method: min/max of the activations, or entropy/percentile of their histograms."""
    format: Literal["qdq", "qoperator"] = "qdq"
    """QDQ: QuantizeLinear/DequantizeLinear pairs that any runtime can fuse; QOperator: QLinear* ops."""
    per_channel: bool = True
    """One scale per output channel of each weight."""
    reduce_range: bool = False
    """7-bit weights, for CPUs without VNNI where 8-bit U8S8 products can saturate."""
    activation_type: Literal["quint8", "qint8"] = "quint8"
    """Activation integer type (uint8 is what ONNX Runtime recommends on x86-64)."""
    weight_type: Literal["qint8", "quint8"] = "qint8"
    """Weight integer type."""
    op_types_to_quantize: list[str] | None = ["Conv", "MatMul", "Gemm"]
    """Op types to quantize (default: the compute-heavy ones); null: every op type ONNX Runtime's static
    quantizer supports. Quantizing element-wise Mul/Add too moved magika to cosine 0.745."""
    nodes_to_exclude: list[str] = []
    """Node names left in float."""
    preprocess: bool = False
    """Run quant_pre_process first (skip_symbolic_shape); on failure the pass goes on without it."""
    extra_options: dict[str, Any] = {}
    """Passed unchanged to onnxruntime.quantization.quantize_static (e.g. ActivationSymmetric)."""

    @model_validator(mode="after")
    def _one_source(self) -> QuantizeStaticConfig:
        if self.data is not None and self.random:
            raise ValueError("'data' and 'random: true' exclude each other")
        return self


class QuantizeStatic(Pass[QuantizeStaticConfig]):
    name = "quantize-static"
    description = "static int8 quantization (QDQ), calibrated on build.calibration data (ONNX Runtime)"
    Config = QuantizeStaticConfig

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        if self.config.data is None and not self.config.random:
            raise PassError(NEEDS_DATA)
        if not has_float32(model if is_large(model) else infer_shapes(model)):
            raise PassSkipped("no float32 computation to quantize")
        handled = _handled_nodes(model, self.config)
        if not handled:
            raise PassSkipped("no node of an op type ONNX Runtime's static quantizer handles")
        signature = signature_of(model)
        result_warnings: list[str] = []
        if self.config.data is not None:
            from gpuxc.project.calibration import load_samples

            path = Path(self.config.data)
            if not path.is_absolute():
                path = (ctx.project_dir or ctx.model_dir) / path
            samples = load_samples(path, signature, self.config.samples, preprocessing=ctx.preprocessing,
                                   tokenizer=ctx.tokenizer)  # fmt: skip
            source = f"data: {self.config.data}"
            needed = MIN_SAMPLES[self.config.method]
            if len(samples) < needed:
                result_warnings.append(f"calibrated on {len(samples)} sample(s); {self.config.method} calibration "
                                       f"wants at least {needed}: give more samples in {self.config.data}")  # fmt: skip
        else:
            from gpuxc.project.calibration import random_samples

            first, _ = generated_inputs(
                model, signature, self.config.shapes or ctx.reference_shapes, ctx.workdir, CALIBRATION_SIZES, "shapes"
            )
            shapes = {k: list(v.shape) for k, v in first.items()}
            samples = random_samples(signature, shapes, self.config.samples, self.config.seed, model)
            source = f"random (seed {self.config.seed}, shapes {shapes})"
            result_warnings.append(RANDOM_WARNING)

        src = ctx.workdir / "quantize-static-in.onnx"
        stats: dict[str, Any] = {
            "calibration": source,
            "samples": len(samples),
            "method": self.config.method,
            "candidates": len(handled),
        }
        model = for_per_channel(model, self.config.per_channel, stats)
        save_model(model, src)
        quantize_from = src
        if self.config.preprocess:
            quantize_from, stats["preprocess"] = _preprocess(src, ctx.workdir, is_large(model))
        try:
            quantized, messages = _quantize_with_bias_fallback(quantize_from, samples, self.config, ctx.workdir,
                                                               is_large(model), stats)  # fmt: skip
        except Exception as exc:
            if quantize_from == src:
                raise PassError(
                    f"ONNX Runtime's quantize_static failed: {type(exc).__name__}: {first_line(exc)}"
                ) from exc
            stats["preprocess"] = f"dropped: quantization failed after it ({type(exc).__name__}: {first_line(exc)})"
            quantized, messages = _quantize_with_bias_fallback(
                src, samples, self.config, ctx.workdir, is_large(model), stats
            )
        added = op_counts(quantized) - op_counts(model)
        quant_ops = sum(v for k, v in added.items() if k in QUANT_OPS or k.startswith("QLinear") or "Integer" in k)
        if quant_ops == 0:
            raise PassSkipped("ONNX Runtime's static quantizer found nothing to quantize")
        stats["quantize_ops_added"] = quant_ops
        stats.update(op_diff(model, quantized))
        if messages:
            stats["quantizer_messages"] = messages[:20]
        return PassResult(model=quantized, modified=True, stats=stats, warnings=result_warnings)


def _handled_nodes(model: ModelProto, config: QuantizeStaticConfig) -> list[str]:
    """Nodes of op types the quantizer would quantize (QDQ: main graph; QOperator: subgraphs too)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    wanted = set(config.op_types_to_quantize or [*QDQRegistry, *QLinearOpsRegistry])
    nodes = iter_nodes(model.graph) if config.format == "qoperator" else iter(model.graph.node)
    skip = set(config.nodes_to_exclude)
    return [n.name or n.op_type for n in nodes if n.op_type in wanted and n.name not in skip]


def _preprocess(src: Path, workdir: Path, large: bool) -> tuple[Path, str]:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = workdir / "quantize-static-pre.onnx"
    try:
        with quiet_quantizer():
            quant_pre_process(
                src,
                dst,
                skip_symbolic_shape=True,
                save_as_external_data=large,
                all_tensors_to_one_file=True,
                external_data_location="quantize-static-pre.data",
            )
    except Exception as exc:
        return src, f"failed, went on without it: {type(exc).__name__}: {first_line(exc)}"
    return dst, "applied"


BIAS_ADJUST_OPTION = "QDQDisableWeightAdjustForInt32Bias"


def _quantize_with_bias_fallback(
    src: Path,
    samples: list[dict[str, np.ndarray]],
    config: QuantizeStaticConfig,
    workdir: Path,
    large: bool,
    stats: dict[str, Any],
) -> tuple[ModelProto, list[str]]:
    """``_quantize``; if ONNX Runtime's int32-bias weight-scale adjustment crashes (it does on a
    per-channel Gemm with a 2-D bias: "truth value of an array ... is ambiguous"), quantize again
    without that adjustment and record it."""
    try:
        return _quantize(src, samples, config, workdir, large)
    except ValueError as exc:
        if "truth value of an array" not in str(exc) or BIAS_ADJUST_OPTION in config.extra_options:
            raise
    retry = config.model_copy(update={"extra_options": {**config.extra_options, BIAS_ADJUST_OPTION: True}})
    stats["int32_bias_weight_adjust"] = "disabled: onnxruntime's adjustment failed on a 2-D bias"
    return _quantize(src, samples, retry, workdir, large)


def _quantize(
    src: Path, samples: list[dict[str, np.ndarray]], config: QuantizeStaticConfig, workdir: Path, large: bool
) -> tuple[ModelProto, list[str]]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._next, None)

        def __len__(self) -> int:
            return len(samples)

    dst = workdir / "quantize-static-out.onnx"
    types = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
    with quiet_quantizer() as messages:
        quantize_static(
            src,
            dst,
            Reader(),
            quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=config.op_types_to_quantize,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=types[config.activation_type],
            weight_type=types[config.weight_type],
            nodes_to_exclude=list(config.nodes_to_exclude),
            use_external_data_format=large,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[config.method],
            extra_options=dict(config.extra_options),
        )
    return onnx.load(str(dst)), messages
