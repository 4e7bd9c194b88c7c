"""``ort-format``: model.ort plus its required-operators config for minimal ONNX Runtime builds."""

from __future__ import annotations

import pytest
from onnx import helper

from fixtures import models
from gpuxc.errors import PassError
from tests.plugins.gpuxc_passes.conftest import (
    apply,
    assert_close,
    f32,
    rng_inputs,
)


def test_ort_format_writes_an_ort_file_onnxruntime_runs(manager, ctx) -> None:
    source = models.tiny_cnn()
    out, record = apply(manager, ctx, source, "ort-format")
    assert out is source and record.status == "unchanged"
    assert set(manager.artifacts) == {"model.ort", "model.required_operators.config"}
    ort_file = manager.artifacts["model.ort"]
    assert ort_file.read_bytes()[4:8] == b"ORTM"  # flatbuffers file identifier of the ORT format
    assert record.stats["ort_bytes"] == ort_file.stat().st_size
    config = manager.artifacts["model.required_operators.config"].read_text(encoding="utf-8")
    assert "ai.onnx;" in config and record.stats["operators"] >= 3
    assert_close(source, ort_file, rng_inputs(image=(2, 3, 32, 32)), "fp32")


def test_ort_format_runtime_style(manager, ctx) -> None:
    _, record = apply(manager, ctx, models.mlp(), "ort-format", {"optimization_style": "Runtime", "level": "basic"})
    assert record.stats["files"]["model.ort"].endswith(".ort") and "runtime_opt" in record.stats["files"]["model.ort"]
    assert manager.artifacts["model.ort"].is_file()


def test_ort_format_skips_models_over_2gb(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.ort_format

    monkeypatch.setattr(gpuxc_passes.ort_format, "is_large", lambda model: True)
    _, record = apply(manager, ctx, models.mlp(), "ort-format")
    assert record.status == "skipped" and "cannot hold a model over 2 GB" in record.reason


def test_ort_format_failure_names_the_tool(manager, ctx) -> None:
    unknown = helper.make_model(
        helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="example.custom")], "custom",
                          [f32("x", [1])], [f32("y", [1])]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)], ir_version=8,
    )  # fmt: skip
    with pytest.raises(PassError, match=r"^pass 'ort-format' failed: convert_onnx_models_to_ort failed: "):
        apply(manager, ctx, unknown, "ort-format")
