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


def test_a_node_kept_in_float_takes_its_siblings_so_onnx_runtime_can_load_the_model(manager, ctx) -> None:
    # Q, K and V read one LayerNorm output. Keeping only V in float (with shapes fixed and basic
    # optimization first) made ONNX Runtime 1.32 refuse the model: "Attempt to replace the existing tensor".
    from fixtures.minilm import TINY, bert_inputs, tiny_bert
    from gpuxc.ort_session import run_onnxruntime
    from gpuxc.passes import PassSpec

    shapes = {name: [1, 16] for name in ("input_ids", "attention_mask", "token_type_ids")}
    prepared, _ = manager.run(tiny_bert(), [PassSpec("fix-shapes", {"shapes": shapes}),
                                             PassSpec("ort-optimize", {"level": "basic"})], ctx)  # fmt: skip
    first = next(n for n in prepared.graph.node if n.op_type == "LayerNormalization").output[0]
    qkv = [n.name for n in prepared.graph.node if n.op_type == "MatMul" and first in n.input]
    assert len(qkv) == 3
    quantized, records = manager.run(prepared, [PassSpec("quantize-dynamic", {"nodes_to_exclude": qkv[-1:]})], ctx)
    assert records[0].stats["excluded_with_siblings"] == qkv[:-1]
    assert {n.name for n in quantized.graph.node if n.op_type == "MatMul"} >= set(qkv)  # all three stay float
    feeds = bert_inputs(1, 16, TINY.vocab)
    assert run_onnxruntime(quantized.SerializeToString(), feeds, level="basic")  # loads and runs
