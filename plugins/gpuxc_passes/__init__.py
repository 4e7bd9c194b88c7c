"""Built-in graph passes, registered through the ``gpuxc`` entry point like any plugin.

- ``ort-optimize``: ONNX Runtime offline graph optimization at a level the target allows.
- ``fix-shapes``: symbolic input dims replaced by the values of ``build.shapes``.
- ``simplify``: onnxsim or onnxslim, checked against the input model.
- ``fold-constants``: ``Constant`` nodes to initializers, constant subgraphs computed once.
- ``fold-sequences``: sequences with constant positions replaced by the tensors they hold.
- ``fp16``: float16 weights and compute (onnxconverter-common), fp32 inputs/outputs kept.
- ``quantize-dynamic``: int8 MatMul/Gemm weights, activations quantized at run time.
- ``quantize-static``: int8 QDQ, calibrated on ``build.calibration`` data.
- ``quantize-int4``: weight-only 4-bit MatMul weights (ONNX Runtime MatMulNBits).
- ``transformer-fusion``: ONNX Runtime's transformer optimizer (Attention, SkipLayerNorm, GELU).
- ``ort-format``: ``model.ort`` + required-operators config for ONNX Runtime minimal builds.

Each pass imports its heavy dependencies inside ``run``; importing this package imports
only onnx, NumPy and gpuxc.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuxc.plugin import hookimpl
from gpuxc_passes.fix_shapes import FixShapes
from gpuxc_passes.fold_constants import FoldConstants
from gpuxc_passes.fold_sequences import FoldSequences
from gpuxc_passes.fp16 import Fp16
from gpuxc_passes.ort_format import OrtFormat
from gpuxc_passes.ort_optimize import OrtOptimize
from gpuxc_passes.quantize_dynamic import QuantizeDynamic
from gpuxc_passes.quantize_int4 import QuantizeInt4
from gpuxc_passes.quantize_static import QuantizeStatic
from gpuxc_passes.simplify import Simplify
from gpuxc_passes.transformer_fusion import TransformerFusion

__all__ = [
    "FixShapes",
    "FoldConstants",
    "FoldSequences",
    "Fp16",
    "OrtFormat",
    "OrtOptimize",
    "QuantizeDynamic",
    "QuantizeInt4",
    "QuantizeStatic",
    "Simplify",
    "TransformerFusion",
]


@hookimpl
def gpuxc_register_passes(register: Callable[[type[Any]], None]) -> None:
    register(OrtOptimize)
    register(FixShapes)
    register(Simplify)
    register(FoldConstants)
    register(FoldSequences)
    register(Fp16)
    register(QuantizeDynamic)
    register(QuantizeStatic)
    register(QuantizeInt4)
    register(TransformerFusion)
    register(OrtFormat)
