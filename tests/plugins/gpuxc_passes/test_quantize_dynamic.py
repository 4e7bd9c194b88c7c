"""``quantize-dynamic``: int8 MatMul/Gemm weights, activations quantized at run time."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import TensorProto

from fixtures import models
from tests.plugins.gpuxc_passes.conftest import (
    apply,
    assert_close,
    ops,
)


def test_quantize_dynamic_makes_int8_matmul_weights(manager, ctx) -> None:
    source = models.mlp()
    out, record = apply(manager, ctx, source, "quantize-dynamic")
    assert record.stats["nodes_quantized"] == 2 and record.stats["candidates"] == 2
    found = ops(out)
    assert found["DynamicQuantizeLinear"] == 2 and found["MatMulInteger"] == 2 and found["Gemm"] == 0  # mlp: 2 Gemm
    int8 = {t.name: list(t.dims) for t in out.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) > 1}
    assert int8 == {"W1_quantized": [8, 16], "W2_quantized": [16, 3]}
    x = np.random.default_rng(3).standard_normal((16, 8)).astype(np.float32)
    assert_close(source, out, {"x": x}, "int8")


def test_quantize_dynamic_leaves_conv_alone_by_default(manager, ctx) -> None:
    out, record = apply(manager, ctx, models.tiny_cnn(), "quantize-dynamic")
    assert record.stats["nodes_quantized"] == 1  # the Gemm head
    assert ops(out)["Conv"] == 1 and "ConvInteger" not in ops(out)
    out, _ = apply(manager, ctx, models.tiny_cnn(), "quantize-dynamic", {"op_types": ["Conv"]})
    assert ops(out)["ConvInteger"] == 1


@pytest.mark.parametrize(("per_channel", "scales"), [(True, 16), (False, 1)])
def test_quantize_dynamic_per_channel_reaches_onnxruntime(manager, ctx, per_channel: bool, scales: int) -> None:
    out, _ = apply(manager, ctx, models.mlp(), "quantize-dynamic", {"per_channel": per_channel})
    scale = next(t for t in out.graph.initializer if t.name == "W1_scale")
    assert int(np.prod(scale.dims)) == scales


def test_quantize_dynamic_collects_quantizer_logs(manager, ctx, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        # per_channel: false keeps opset 9 (per-channel would upgrade it to 13), which ORT warns about.
        _, record = apply(manager, ctx, models.legacy_initializer_inputs(), "quantize-dynamic", {"per_channel": False})
    assert any("opset version is 9" in m for m in record.stats["quantizer_messages"])
    assert not any("opset version" in r.getMessage() for r in caplog.records)  # not printed to the console


def test_quantizer_logging_leaves_the_process_logging_alone(manager, ctx, monkeypatch) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh process
    apply(manager, ctx, models.legacy_initializer_inputs(), "quantize-dynamic")  # ORT logs a warning
    assert logging.getLogger().handlers == []  # logging.warning() would have installed a console handler


def test_per_channel_quantization_upgrades_an_old_opset_to_13(manager, ctx) -> None:
    # ONNX Runtime's quantizer writes per-channel DequantizeLinear (axis) into an opset-9 graph,
    # which its own loader rejects; the pass upgrades the opset first and records it.
    out, record = apply(manager, ctx, models.legacy_initializer_inputs(), "quantize-dynamic")
    assert record.stats["opset_upgraded"] == "9 -> 13"
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == 13
