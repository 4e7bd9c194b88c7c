"""``simplify``: onnxsim or onnxslim, checked against the input model."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fixtures import models
from gpuxc.errors import PassError
from tests.plugins.gpuxc_passes.conftest import (
    apply,
    assert_close,
    f32,
    model_of,
    ops,
    rng_inputs,
    unknown_dims_model,
    weights,
)


def redundant_shape_model() -> onnx.ModelProto:
    """``x[2, 8] -> Reshape(x, [-1, dim1(x)]) -> MatMul(W)``: the Shape/Gather/Concat chain is constant."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["d1"], axis=0),
        helper.make_node("Unsqueeze", ["d1", "zero"], ["d1u"]),
        helper.make_node("Concat", ["minus_one", "d1u"], ["new_shape"], axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(weights(8, 4), "W"),
    ]
    return model_of(nodes, [f32("x", [2, 8])], [f32("y", [2, 4])], inits)


@pytest.mark.parametrize("backend", ["onnxsim", "onnxslim"])
def test_simplify_folds_a_redundant_shape_computation(manager, ctx, backend: str) -> None:
    source = redundant_shape_model()
    out, record = apply(manager, ctx, source, "simplify", {"backend": backend})
    assert record.status == "applied"
    assert record.stats["backend"] == backend
    assert {"Shape", "Gather", "Concat"} <= set(record.stats["ops_removed"])
    assert record.stats["nodes_after"] < record.stats["nodes_before"] == 6
    assert "Shape" not in ops(out)
    assert record.stats["check"]["status"] == "passed"
    assert_close(source, out, rng_inputs(x=(2, 8)), "fp32")


def test_simplify_without_the_backend_is_skipped_with_an_install_hint(manager, ctx, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # import onnxsim -> ImportError
    source = models.mlp()
    out, record = apply(manager, ctx, source, "simplify")
    assert record.status == "skipped"
    assert "onnxsim is not installed" in record.reason and "pip install onnxsim" in record.reason
    assert out is source


def test_simplify_with_onnxsim_skips_models_over_2gb(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.simplify

    monkeypatch.setattr(gpuxc_passes.simplify, "is_large", lambda model: True)
    _, record = apply(manager, ctx, models.mlp(), "simplify")
    assert record.status == "skipped"
    assert record.reason.startswith("onnxsim cannot simplify a model over 2 GB (protobuf limit)")


def test_simplify_result_that_differs_is_refused(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.simplify

    def wrong(module, backend, model):
        broken = onnx.ModelProto()
        broken.CopyFrom(model)
        next(n for n in broken.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
        return broken

    monkeypatch.setattr(gpuxc_passes.simplify, "_simplify", wrong)
    source = models.mlp()
    out, record = apply(manager, ctx, source, "simplify", required=False)
    assert record.status == "skipped"
    assert record.reason.startswith("the onnxsim result differs from the input model: probs: ")
    assert out is source
    with pytest.raises(PassError, match=r"^pass 'simplify' failed: the onnxsim result differs"):
        apply(manager, ctx, source, "simplify")


def test_simplifier_exception_fails_the_pass(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.simplify

    def boom(module, backend, model):
        raise RuntimeError("cannot fold\nsecond line")

    monkeypatch.setattr(gpuxc_passes.simplify, "_simplify", boom)
    with pytest.raises(PassError, match=r"^pass 'simplify' failed: onnxslim failed: RuntimeError: cannot fold$"):
        apply(manager, ctx, models.mlp(), "simplify", {"backend": "onnxslim"})


@pytest.mark.parametrize("backend", ["onnxsim", "onnxslim"])
def test_simplify_check_needs_shapes_the_defaults_cannot_guess(manager, ctx, backend: str) -> None:
    source = unknown_dims_model()
    _, record = apply(manager, ctx, source, "simplify", {"backend": backend}, required=False)
    assert record.status == "skipped"
    assert record.reason.startswith("the input model does not run on generated inputs {'x': [1, 4]} (ONNX Runtime")
    assert record.reason.endswith("give the input shapes with the pass parameter 'check_shapes'")
    out, record = apply(manager, ctx, source, "simplify", {"backend": backend, "check_shapes": {"x": [2, 5]}})
    assert record.stats["check"]["shapes"] == {"x": [2, 5]}
    assert_close(source, out, rng_inputs(x=(2, 5)), "fp32")


def test_simplify_leaves_an_already_simple_model_unchanged(manager, ctx) -> None:
    source = models.mlp()
    out, record = apply(manager, ctx, source, "simplify")
    assert record.status == "unchanged"
    assert out is source
