"""The pass manager (gpuxc.passes): provenance records, skipping, failure handling, typed parameters.

Built-in passes serve as real passes here; their own behaviour is tested in tests/plugins/gpuxc_passes."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from fixtures import models
from gpuxc.errors import PassError, PluginError
from gpuxc.passes import Pass, PassConfig, PassContext, PassManager, PassResult, PassSpec
from gpuxc.plugin import get_registry
from gpuxc.plugin.manager import Registry


@pytest.fixture
def ctx(tmp_path: Path) -> PassContext:
    return PassContext(workdir=tmp_path, target="cpu", model_dir=tmp_path)


@pytest.fixture
def manager() -> PassManager:
    return PassManager(get_registry())


# -- provenance ------------------------------------------------------------------------------


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


# -- failures --------------------------------------------------------------------------------


class Boom(Pass[PassConfig]):
    name = "boom"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        raise RuntimeError("kaboom\nwith a second line")


class NotApplicable(Pass[PassConfig]):
    name = "not-applicable"

    def why_skip(self, model: onnx.ModelProto) -> str | None:
        return "needs something this model lacks"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:  # pragma: no cover - never called
        raise AssertionError("run() must not be called when why_skip() gives a reason")


class NoOpConfig(PassConfig):
    strength: int = 1


class NoOp(Pass[NoOpConfig]):
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
