"""``quantize-int4``: weight-only 4-bit MatMul weights (ONNX Runtime ``MatMulNBits``).

ONNX Runtime's ``MatMulNBitsQuantizer`` replaces a ``MatMul`` whose weight is a constant by a
``com.microsoft`` ``MatMulNBits``: the weight stored as 4-bit integers in blocks of
``block_size`` values along the input dimension, one float scale per block (symmetric: no zero
point). Activations stay float; ``accuracy_level`` picks the kernel's compute type (4: int8
products, the fastest on x86-64 CPUs with VNNI; 0: the op's default). It pays where weights
dominate, in memory and memory bandwidth (large language models); on a small encoder such as
MiniLM it is lossier than int8-dynamic and not faster (docs/passes.md has the figures), so it is
an opt-in precision, verified at the int8 tolerance like every lossy variant.

Only MatMuls whose weight has at least ``min_weight_elements`` values are quantized: small
projections (classifier heads) cost accuracy for no gain. ``MatMulNBits`` is an ONNX Runtime
contrib op (CPU, CUDA, DirectML providers); the openvino target compresses weights with NNCF
instead (plugins/gpuxc_openvino/weights.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from onnx import ModelProto, TensorProto
from pydantic import Field

from gpuxc.errors import PassError
from gpuxc.passes import Pass, PassConfig, PassContext, PassResult, PassSkipped
from gpuxc_passes._common import is_large, op_counts, op_diff, quiet_quantizer, reason


class QuantizeInt4Config(PassConfig):
    block_size: Literal[16, 32, 64, 128, 256] = 32
    """Weights per scale along the input dimension; smaller blocks are more accurate and a little larger."""
    symmetric: bool = True
    """Symmetric blocks (no zero point): the form ONNX Runtime's CPU kernels are fastest with."""
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    """MatMulNBits compute type: 4 = int8 (fastest on x86-64), 0 = the op's default (float)."""
    min_weight_elements: Annotated[int, Field(ge=1)] = 65536
    """Quantize only MatMuls whose constant weight has at least this many values (256x256)."""
    nodes_to_exclude: list[str] = []
    """Node names left in float (the precision repair's lever)."""


class QuantizeInt4(Pass[QuantizeInt4Config]):
    name = "quantize-int4"
    description = "weight-only 4-bit MatMul weights (ONNX Runtime MatMulNBits), activations float"
    Config = QuantizeInt4Config

    def why_skip(self, model: ModelProto) -> str | None:
        if is_large(model):
            return "MatMulNBitsQuantizer works on the in-memory model, which cannot exceed 2 GB"
        return None

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        work = ModelProto()
        work.CopyFrom(model)
        named = _name_matmuls(work)  # the quantizer excludes nodes by name
        candidates = int4_candidates(work, self.config.min_weight_elements, self.config.nodes_to_exclude)
        if not candidates:
            raise PassSkipped(f"no MatMul with a constant float weight of at least "
                              f"{self.config.min_weight_elements} values")  # fmt: skip
        # Inside quiet_quantizer: the module calls logging.basicConfig(level=INFO) when imported,
        # which would send every library's INFO lines to the console for the rest of the process.
        with quiet_quantizer() as messages:
            try:
                from onnxruntime.quantization.matmul_nbits_quantizer import (
                    DefaultWeightOnlyQuantConfig,
                    MatMulNBitsQuantizer,
                )
            except ImportError as exc:  # onnxruntime's quantizer imports onnx-ir, a separate package
                raise PassSkipped(f"ONNX Runtime's MatMulNBits quantizer cannot be imported ({exc}): "
                                  "pip install onnx-ir") from None  # fmt: skip
            config = DefaultWeightOnlyQuantConfig(
                block_size=self.config.block_size, is_symmetric=self.config.symmetric,
                accuracy_level=self.config.accuracy_level, op_types_to_quantize=("MatMul",),
            )  # fmt: skip
            try:
                # nodes_to_include only adds to op_types_to_quantize: the other MatMuls are excluded by name.
                others = [n.name for n in work.graph.node if n.op_type == "MatMul" and n.name not in candidates]
                quantizer = MatMulNBitsQuantizer(work, nodes_to_exclude=others, algo_config=config)
                quantizer.process()
            except Exception as exc:
                raise PassError(f"ONNX Runtime's MatMulNBits quantizer failed: {reason(exc)}") from None
        quantized: ModelProto = quantizer.model.model
        op = "com.microsoft:MatMulNBits"
        done = op_counts(quantized).get(op, 0) - op_counts(model).get(op, 0)
        if done <= 0:
            raise PassSkipped(f"ONNX Runtime quantized none of the {len(candidates)} candidate MatMul(s)")
        stats: dict[str, Any] = {
            "candidates": len(candidates),
            "nodes_quantized": done,
            "weight_bytes": {"before": _weight_bytes(model), "after": _weight_bytes(quantized)},
            **op_diff(model, quantized),
        }
        if named:
            stats["nodes_named"] = named
        messages = [m for m in messages if "Quantization parameters for tensor" not in m and "non constant B" not in m]
        if messages:
            stats["quantizer_messages"] = messages[:20]
        return PassResult(model=quantized, modified=True, stats=stats)


def int4_candidates(model: ModelProto, min_elements: int, exclude: list[str]) -> list[str]:
    """Names of the main graph's MatMuls whose weight (input 1) is a 2-D float32 initializer of at least
    ``min_elements`` values. The quantizer selects by name, so unnamed MatMuls cannot be candidates."""
    inits = {t.name: t for t in model.graph.initializer}
    skip = set(exclude)
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or not node.name or node.name in skip or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is not None and weight.data_type == TensorProto.FLOAT and len(weight.dims) == 2:
            if int(np.prod(weight.dims)) >= min_elements:
                found.append(node.name)
    return found


def _name_matmuls(model: ModelProto) -> int:
    """Give unnamed main-graph MatMuls a unique name; how many were named."""
    taken = {n.name for n in model.graph.node}
    named = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type == "MatMul" and not node.name:
            name = f"MatMul_int4_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


def _weight_bytes(model: ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)
