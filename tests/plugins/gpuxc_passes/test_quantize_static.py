"""``quantize-static``: int8 QDQ calibrated on data (or, asked, on random inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures import models
from gpuxc.errors import PassError
from tests.plugins.gpuxc_passes.conftest import (
    apply,
    assert_close,
    ops,
)


def cnn_calibration(folder: Path, n: int = 8) -> None:
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        np.savez(folder / f"{i:03d}.npz", image=rng.standard_normal((1, 3, 32, 32)).astype(np.float32))


def test_quantize_static_inserts_qdq_calibrated_on_data(manager, ctx) -> None:
    cnn_calibration(ctx.project_dir / "calib")
    source = models.tiny_cnn()
    out, record = apply(manager, ctx, source, "quantize-static", {"data": "calib", "samples": 6})
    found = ops(out)
    assert found["QuantizeLinear"] > 0 and found["DequantizeLinear"] > found["QuantizeLinear"]
    assert record.stats["samples"] == 6 and record.stats["calibration"] == "data: calib"
    assert record.warnings == []
    image = np.random.default_rng(9).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert_close(source, out, {"image": image}, "int8")


def test_too_few_samples_for_the_calibration_method_are_warned(manager, ctx) -> None:
    cnn_calibration(ctx.project_dir / "calib")
    _, record = apply(manager, ctx, models.tiny_cnn(), "quantize-static",
                      {"data": "calib", "samples": 6, "method": "percentile"})  # fmt: skip
    assert record.warnings == ["calibrated on 6 sample(s); percentile calibration wants at least 32: "
                               "give more samples in calib"]  # fmt: skip


def test_quantize_static_qoperator_format(manager, ctx) -> None:
    cnn_calibration(ctx.project_dir / "calib", 2)
    out, _ = apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": str(ctx.project_dir / "calib"),
                                                                        "format": "qoperator"})  # fmt: skip
    assert ops(out)["QLinearConv"] == 1


def test_quantize_static_without_data_says_how_to_give_it(manager, ctx) -> None:
    with pytest.raises(PassError) as info:
        apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"seed": 0})
    assert str(info.value) == (
        "pass 'quantize-static' failed: static quantization needs calibration data: set build.calibration.data to a "
        "folder of .npz/.npy files (one sample each) or one .npz holding N samples per input, or "
        "build.calibration.random: true for a smoke test"
    )


def test_quantize_static_on_random_inputs_warns(manager, ctx) -> None:
    source = models.tiny_cnn()
    out, record = apply(manager, ctx, source, "quantize-static", {"random": True, "samples": 4})
    assert record.status == "applied"
    assert record.warnings == ["calibrated on random inputs: accuracy on real data is unknown"]
    assert record.stats["calibration"].startswith("random (seed 0, shapes {'image': [1, 3, 32, 32]})")
    assert ops(out)["QuantizeLinear"] > 0


def test_quantize_static_refuses_data_and_random_together(manager, ctx) -> None:
    with pytest.raises(PassError, match="bad parameter : Value error, 'data' and 'random: true' exclude each other"):
        apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": "calib", "random": True})


def test_quantize_static_bad_data_names_the_pass_and_the_file(manager, ctx) -> None:
    (ctx.project_dir / "calib").mkdir()
    np.savez(ctx.project_dir / "calib" / "a.npz", image=np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(PassError, match=r"^pass 'quantize-static' failed: 'calib/a.npz': 'image' has shape"):
        apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": "calib"})


def test_quantize_static_preprocess_failure_is_recorded_not_fatal(manager, ctx, monkeypatch) -> None:
    import onnxruntime.quantization.shape_inference as shape_inference

    def broken(*args, **kwargs):
        raise RuntimeError("Incomplete symbolic shape inference")

    monkeypatch.setattr(shape_inference, "quant_pre_process", broken)
    cnn_calibration(ctx.project_dir / "calib", 2)
    out, record = apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": "calib", "preprocess": True})
    assert record.status == "applied"
    assert record.stats["preprocess"] == "failed, went on without it: RuntimeError: Incomplete symbolic shape inference"


def test_quantize_static_retries_without_preprocess_when_quantizing_fails_after_it(manager, ctx, monkeypatch) -> None:
    import gpuxc_passes.quantize_static as qs

    real = qs._quantize

    def fails_after_preprocess(src, *args):
        if src.name == "quantize-static-pre.onnx":
            raise ValueError("The truth value of an array is ambiguous")
        return real(src, *args)

    monkeypatch.setattr(qs, "_quantize", fails_after_preprocess)
    cnn_calibration(ctx.project_dir / "calib", 2)
    _, record = apply(manager, ctx, models.tiny_cnn(), "quantize-static", {"data": "calib", "preprocess": True})
    assert record.status == "applied"
    assert record.stats["preprocess"].startswith("dropped: quantization failed after it (ValueError: The truth")


def test_quantize_static_skips_models_it_cannot_quantize(manager, ctx) -> None:
    _, record = apply(manager, ctx, models.zipmap_classifier(), "quantize-static", {"random": True})
    assert (record.status, record.reason) == (
        "skipped",
        "no node of an op type ONNX Runtime's static quantizer handles",
    )
