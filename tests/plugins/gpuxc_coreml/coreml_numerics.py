"""Whole-model numerics off macOS: MIL value inference (NumPy) against ONNX Runtime.

coremltools has no value inference for conv, pooling, batch norm, LRN or resize, so a whole CNN
cannot be run through it. ``compare_around`` cuts the model at those ops: ONNX Runtime computes
their outputs on the real model, they are fed to the translated rest as inputs, and every other
translated op (activations, the detection head, folded constants, Gemm, Softmax...) is
compared end to end. The cut ops' own numerics remain for a Mac (docs/targets/coreml.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from gpuxc_coreml.translate import evaluate
from onnx import helper

NO_VALUE_INFERENCE = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization", "LRN",
                                "Resize", "Upsample", "InstanceNormalization"})  # fmt: skip


def compare_around(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs difference per graph output between the translation (cut ops fed from ONNX Runtime)
    and ONNX Runtime on the whole model."""
    cut = [n for n in model.graph.node if n.op_type in NO_VALUE_INFERENCE]
    cut_outputs = [n.output[0] for n in cut]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in cut_outputs if n not in known)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    del rest.graph.node[:]
    rest.graph.node.extend(n for n in model.graph.node if n.op_type not in NO_VALUE_INFERENCE)
    rest.graph.input.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, values[n].shape)
                            for n in cut_outputs)  # fmt: skip
    # MIL's sigmoid value inference computes 1 / (1 + exp(-x)), which overflows to the right 0.
    with np.errstate(over="ignore"):
        got = evaluate(rest, {**feeds, **{n: values[n] for n in cut_outputs}})
    errors = {}
    for out in model.graph.output:
        value = got[out.name]
        assert value is not None, f"{out.name}: no value inference on the way"
        errors[out.name] = float(np.max(np.abs(value - values[out.name])))
    return errors
