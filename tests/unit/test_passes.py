"""The pass API: PassManager provenance and failure handling, and the built-in passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import models
from gpuxc.errors import PassError, PluginError
from gpuxc.ort_session import run_onnxruntime
from gpuxc.passes import Pass, PassConfig, PassContext, PassManager, PassResult, PassSpec
from gpuxc.plugin import get_registry
from gpuxc.plugin.manager import Registry
from gpuxc.project.graph import iter_nodes


@pytest.fixture
def ctx(tmp_path: Path) -> PassContext:
    return PassContext(workdir=tmp_path, target="cpu", model_dir=tmp_path)


@pytest.fixture
def manager() -> PassManager:
    return PassManager(get_registry())


def domains(model: onnx.ModelProto) -> set[str]:
    return {node.domain for node in iter_nodes(model.graph)}


def run_model(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_onnxruntime(model.SerializeToString(), inputs, level="none")


# -- ort-optimize ----------------------------------------------------------------------------


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


def test_records_carry_provenance(manager: PassManager, ctx: PassContext) -> None:
    source = models.tiny_cnn()
    model, [record] = manager.run(source, [PassSpec("ort-optimize", {"level": "basic"})], ctx)
    assert record.name == "ort-optimize"
    assert record.params == {
        "level": "basic",
        "providers": ["CPUExecutionProvider"],
    }  # defaults filled in
    assert record.required is True
    assert isinstance(record.seconds, float) and record.seconds >= 0
    assert record.stats["nodes_before"] == len(source.graph.node)
    assert record.stats["nodes_after"] == len(model.graph.node)
    assert record.stats["bytes_before"] == source.ByteSize()
    # BASIC folds the BatchNormalization into the Conv weights.
    assert record.status == "applied"
    assert record.stats["ops_removed"] == {"BatchNormalization": 1}


def test_unchanged_model_is_recorded_as_unchanged(manager: PassManager, ctx: PassContext) -> None:
    _, [record] = manager.run(models.mlp(), [PassSpec("ort-optimize", {"level": "basic"})], ctx)
    assert record.status == "unchanged"


def test_the_callers_model_is_not_modified(manager: PassManager, ctx: PassContext) -> None:
    source = models.tiny_cnn()
    before = source.SerializeToString()
    manager.run(source, [PassSpec("ort-optimize", {"level": "extended"})], ctx)
    manager.run(models.mlp(), [PassSpec("fix-shapes", {"shapes": {"x": [2, 8]}})], ctx)
    assert source.SerializeToString() == before


# -- fix-shapes ------------------------------------------------------------------------------


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


# -- failures --------------------------------------------------------------------------------


class Boom(Pass):
    name = "boom"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        raise RuntimeError("kaboom\nwith a second line")


class NotApplicable(Pass):
    name = "not-applicable"

    def requires(self, model: onnx.ModelProto) -> str | None:
        return "needs something this model lacks"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:  # pragma: no cover - never called
        raise AssertionError("run() must not be called when requires() gives a reason")


class NoOpConfig(PassConfig):
    strength: int = 1


class NoOp(Pass):
    name = "noop"
    Config = NoOpConfig

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        return PassResult(model=model, modified=False, stats={"strength": self.config.strength})


@pytest.fixture
def custom_manager() -> PassManager:
    builtin = get_registry()
    registry = Registry(passes={**builtin.passes, "boom": Boom, "not-applicable": NotApplicable, "noop": NoOp})
    return PassManager(registry)


def test_failing_required_pass_names_the_passes_that_ran_before(custom_manager: PassManager, ctx) -> None:
    specs = [PassSpec("ort-optimize", {"level": "basic"}), PassSpec("noop"), PassSpec("boom")]
    with pytest.raises(PassError) as info:
        custom_manager.run(models.mlp(), specs, ctx)
    message = str(info.value)
    assert message.startswith("pass 'boom' failed (after ort-optimize, noop): RuntimeError: kaboom")
    assert "second line" not in message


def test_first_pass_failing_has_no_after_clause(custom_manager: PassManager, ctx) -> None:
    with pytest.raises(PassError) as info:
        custom_manager.run(models.mlp(), [PassSpec("boom")], ctx)
    assert str(info.value).startswith("pass 'boom' failed: ")


def test_gpuxc_error_in_a_required_pass_keeps_its_message(manager: PassManager, ctx) -> None:
    specs = [
        PassSpec("ort-optimize", {"level": "basic"}),
        PassSpec("fix-shapes", {"shapes": {"x": [1, 9]}}),
    ]
    with pytest.raises(PassError, match=r"pass 'fix-shapes' failed \(after ort-optimize\): build.shapes.x\[1\]"):
        manager.run(models.mlp(), specs, ctx)


def test_failing_optional_pass_is_recorded_as_skipped(custom_manager: PassManager, ctx) -> None:
    specs = [PassSpec("boom", required=False), PassSpec("ort-optimize", {"level": "basic"})]
    model, records = custom_manager.run(models.tiny_cnn(), specs, ctx)
    assert [r.name for r in records] == ["boom", "ort-optimize"]
    skipped = records[0]
    assert skipped.status == "skipped"
    assert skipped.required is False
    assert skipped.reason == "RuntimeError: kaboom"
    assert records[1].status == "applied"  # the build went on


def test_pass_that_does_not_apply_is_skipped_with_its_reason(custom_manager: PassManager, ctx) -> None:
    source = models.mlp()
    model, [record] = custom_manager.run(source, [PassSpec("not-applicable")], ctx)
    assert record.status == "skipped"
    assert record.reason == "needs something this model lacks"
    assert model is source


def test_skipped_passes_are_not_listed_as_having_run(custom_manager: PassManager, ctx) -> None:
    specs = [PassSpec("not-applicable"), PassSpec("noop"), PassSpec("boom")]
    with pytest.raises(PassError, match=r"failed \(after noop\)"):
        custom_manager.run(models.mlp(), specs, ctx)


def test_typed_params_reach_the_pass(custom_manager: PassManager, ctx) -> None:
    _, [record] = custom_manager.run(models.mlp(), [PassSpec("noop", {"strength": 3})], ctx)
    assert record.params == {"strength": 3}
    assert record.stats["strength"] == 3


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"level": "maximum"}, "bad parameter level"),
        ({"levle": "basic"}, "bad parameter levle"),
        ({"providers": "CPUExecutionProvider"}, "bad parameter providers"),
    ],
)
def test_bad_pass_params_are_a_pass_error(manager: PassManager, ctx: PassContext, params, match: str) -> None:
    with pytest.raises(PassError, match=match) as info:
        manager.run(models.mlp(), [PassSpec("ort-optimize", params)], ctx)
    assert "pass 'ort-optimize'" in str(info.value)


def test_unknown_pass_is_a_plugin_error(manager: PassManager, ctx: PassContext) -> None:
    with pytest.raises(PluginError, match="unknown pass 'ort-optimise'.*did you mean 'ort-optimize'"):
        manager.run(models.mlp(), [PassSpec("ort-optimise")], ctx)


def test_progress_callback_hears_each_pass(custom_manager: PassManager, ctx) -> None:
    heard: list[str] = []
    custom_manager.run(models.mlp(), [PassSpec("noop"), PassSpec("not-applicable")], ctx, progress=heard.append)
    assert heard == ["pass noop", "pass not-applicable"]
