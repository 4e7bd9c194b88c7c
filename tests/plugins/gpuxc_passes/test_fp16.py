"""``fp16``: float16 weights and compute, fp32 inputs/outputs kept, loadable in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fixtures import models
from tests.plugins.gpuxc_passes.conftest import (
    apply,
    assert_close,
    f32,
    model_of,
    rng_inputs,
    run_model,
    weights,
)


def io_types(model: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]


def test_fp16_makes_weights_float16_and_keeps_fp32_io(manager, ctx) -> None:
    source = models.tiny_cnn()
    out, record = apply(manager, ctx, source, "fp16")
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.FLOAT16}
    assert io_types(out) == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert record.stats["float16_tensors"] == len(source.graph.initializer)
    assert record.stats["check"]["status"] == "passed"
    assert_close(source, out, rng_inputs(image=(2, 3, 32, 32)), "fp16")


def test_fp16_without_keep_io_types_takes_float16_io(manager, ctx) -> None:
    out, _ = apply(manager, ctx, models.mlp(), "fp16", {"keep_io_types": False})
    assert io_types(out) == [TensorProto.FLOAT16, TensorProto.FLOAT16]
    x = rng_inputs(x=(2, 8))["x"]
    assert run_model(out, {"x": x.astype(np.float16)})["probs"].dtype == np.float16


def test_fp16_corrects_casts_to_float(manager, ctx) -> None:
    source = models.int64_text_model()  # Cast(attention_mask -> float)
    out, record = apply(manager, ctx, source, "fp16")
    assert record.stats["casts_fixed"] == 1
    cast = next(n for n in out.graph.node if n.name == "mask_cast")
    assert cast.attribute[0].i == TensorProto.FLOAT16
    ids = np.array([[1, 5, 7, 49]], np.int64)
    assert_close(source, out, {"input_ids": ids, "attention_mask": np.ones_like(ids)}, "fp16")


def test_fp16_types_values_after_ml_ops_from_onnxruntime(manager, ctx) -> None:
    source = models.ml_domain()  # ONNX shape inference types nothing after Normalizer/LinearRegressor
    out, record = apply(manager, ctx, source, "fp16")
    assert record.stats["types_from_onnxruntime"] == 2
    assert {n.op_type for n in out.graph.node if n.domain == "ai.onnx.ml"} == {"Normalizer", "LinearRegressor"}
    assert_close(source, out, rng_inputs(x=(3, 4)), "fp16")


def test_fp16_on_ir3_initializer_inputs(manager, ctx) -> None:
    source = models.legacy_initializer_inputs()
    out, record = apply(manager, ctx, source, "fp16")
    assert record.stats["initializer_inputs_dropped"] == ["W"]
    assert [v.name for v in out.graph.input] == ["x"] and out.ir_version == 4
    assert_close(source, out, rng_inputs(x=(1, 4)), "fp16")


def test_fp16_keeps_control_flow_in_float32(manager, ctx) -> None:
    source = models.with_if()
    out, record = apply(manager, ctx, source, "fp16")
    assert record.status == "applied"
    for cond in (True, False):
        assert_close(source, out, {"cond": np.array(cond), "x": np.array([1.0, -2.0, 3.0], np.float32)}, "fp16")
    _, record = apply(manager, ctx, source, "fp16", {"block_control_flow": False}, required=False)
    assert record.status == "skipped"  # the converter alone breaks the outer-scope read of x
    assert record.reason.startswith("the float16 model does not run in ONNX Runtime CPU: ")


def test_fp16_counts_clamped_constants_without_leaking_warnings(manager, ctx) -> None:
    w = weights(8, 4)
    w[0, 0], w[0, 1] = 1e-9, 3e4  # below min_positive_val, above max_finite_val
    source = model_of([helper.make_node("MatMul", ["x", "W"], ["y"])], [f32("x", [1, 8])], [f32("y", [1, 4])],
                      [numpy_helper.from_array(w, "W")])  # fmt: skip
    _, record = apply(manager, ctx, source, "fp16")  # filterwarnings=error: a leaked warning would fail it
    assert record.stats["tensors_clamped"] == 2


def test_fp16_skips_models_without_float32(manager, ctx) -> None:
    ints = model_of([helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_tensor_value_info("a", 7, [2])],
                    [helper.make_tensor_value_info("b", 7, [2])])  # fmt: skip
    _, record = apply(manager, ctx, ints, "fp16")
    assert (record.status, record.reason) == ("skipped", "no float32 weights or computation to convert")
    _, record = apply(manager, ctx, models.zipmap_classifier(), "fp16")  # every op is in the block list
    assert record.reason == "every float32 op is in op_block_list/node_block_list: nothing to convert"


def test_fp16_default_block_list_is_onnxconverters() -> None:
    from gpuxc_passes.fp16 import Fp16Config
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

    assert Fp16Config().op_block_list == list(DEFAULT_OP_BLOCK_LIST)
