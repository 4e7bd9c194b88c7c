"""``ort-optimize``: ONNX Runtime offline graph optimization at the level the target allows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fixtures import models
from gpuxc.passes import PassContext, PassManager, PassSpec
from gpuxc.project.graph import iter_nodes
from tests.plugins.gpuxc_passes.conftest import run_model


def domains(model: onnx.ModelProto) -> set[str]:
    return {node.domain for node in iter_nodes(model.graph)}


@pytest.mark.parametrize("build", [models.tiny_cnn, models.mlp])
def test_basic_level_leaves_only_standard_onnx_ops(manager: PassManager, ctx: PassContext, build) -> None:
    model, [record] = manager.run(build(), [PassSpec("ort-optimize", {"level": "basic"})], ctx)
    assert "com.microsoft" not in domains(model)
    assert record.stats["contrib_ops"] == 0
    onnx.checker.check_model(model)


def test_extended_level_may_fuse_into_contrib_ops(manager: PassManager, ctx: PassContext) -> None:
    model, [record] = manager.run(models.tiny_cnn(), [PassSpec("ort-optimize", {"level": "extended"})], ctx)
    contrib = [n.op_type for n in iter_nodes(model.graph) if n.domain == "com.microsoft"]
    assert record.stats["contrib_ops"] == len(contrib)
    # On this conv net ONNX Runtime's CPU provider fuses Conv+BN+Relu at EXTENDED; BASIC does not.
    assert contrib, "expected a com.microsoft fused op at the extended level"


def test_optimized_model_computes_the_same_outputs(manager: PassManager, ctx: PassContext) -> None:
    source = models.tiny_cnn()
    image = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = run_model(source, {"image": image})["logits"]
    for level in ("basic", "extended"):
        model, _ = manager.run(source, [PassSpec("ort-optimize", {"level": level})], ctx)
        np.testing.assert_allclose(run_model(model, {"image": image})["logits"], expected, rtol=1e-4, atol=1e-5)
