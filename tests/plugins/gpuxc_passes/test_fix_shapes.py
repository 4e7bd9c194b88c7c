"""``fix-shapes``: symbolic input dims replaced by the values of ``build.shapes``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fixtures import models
from gpuxc.errors import PassError
from gpuxc.passes import PassContext, PassManager, PassSpec
from tests.plugins.gpuxc_passes.conftest import run_model


def input_dims(model: onnx.ModelProto, name: str) -> list[int | str]:
    value = next(v for v in model.graph.input if v.name == name)
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_fix_shapes_replaces_symbolic_dims(manager: PassManager, ctx: PassContext) -> None:
    source = models.tiny_cnn(dynamic_spatial=True)
    assert input_dims(source, "image") == ["N", 3, "H", "W"]
    model, [record] = manager.run(source, [PassSpec("fix-shapes", {"shapes": {"image": [2, 3, 40, 48]}})], ctx)
    assert input_dims(model, "image") == [2, 3, 40, 48]
    assert record.status == "applied"
    assert record.stats["fixed"] == {"image": [2, 3, 40, 48]}
    # Shape inference ran again: the output's batch dim is now fixed too.
    out = model.graph.output[0].type.tensor_type.shape.dim
    assert out[0].dim_value == 2
    image = np.zeros((2, 3, 40, 48), np.float32)
    assert run_model(model, {"image": image})["logits"].shape == (2, 4)


def test_fix_shapes_with_nothing_symbolic_is_unchanged(manager: PassManager, ctx: PassContext) -> None:
    _, [record] = manager.run(models.multi_io(), [PassSpec("fix-shapes", {"shapes": {"a": [2, 3]}})], ctx)
    assert record.status == "unchanged"


def test_fix_shapes_rank_mismatch_is_a_pass_error(manager: PassManager, ctx: PassContext) -> None:
    with pytest.raises(PassError, match="rank 3, the model input has rank 2"):
        manager.run(models.mlp(), [PassSpec("fix-shapes", {"shapes": {"x": [1, 8, 1]}})], ctx)


def test_fix_shapes_fixed_dim_conflict_is_a_pass_error(manager: PassManager, ctx: PassContext) -> None:
    with pytest.raises(PassError, match=r"x\[1\] is 9, but the model fixes that dim to 8"):
        manager.run(models.mlp(), [PassSpec("fix-shapes", {"shapes": {"x": [1, 9]}})], ctx)


def test_fix_shapes_unknown_input_is_a_pass_error(manager: PassManager, ctx: PassContext) -> None:
    with pytest.raises(PassError, match="'y', which is not a model input"):
        manager.run(models.mlp(), [PassSpec("fix-shapes", {"shapes": {"y": [1, 8]}})], ctx)
