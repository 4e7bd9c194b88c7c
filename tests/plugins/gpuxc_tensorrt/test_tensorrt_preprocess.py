"""tensorrt with image preprocessing (no GPU here: contract and graph checks, never an engine).

The prepared ONNX keeps the uint8 [N, H, W, 3] input and the Cast/Shape/Resize/Pad/Slice chain;
its optimization profile for the pixels is a band around the reference size (min half, opt the
size the graph resizes to, max twice), and the adapter scales pictures outside the band into it."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from tests.plugins.gpuxc_tensorrt.test_tensorrt_contract import run_with_fakes, write_fake_site
from tests.plugins.preprocess_project import compile_target, manifest, pixel_input_of, preprocessing_nodes
from tests.project.test_preprocess_graph import resize_bilinear

RUNTIME = Path(__file__).resolve().parents[3] / "templates" / "tensorrt" / "runtime.py"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_target(tmp_path_factory.mktemp("trt-pre"), "tensorrt")


def test_prepared_onnx_keeps_uint8_pixels_and_the_chain(bundle: Path) -> None:
    model = onnx.load(bundle / "model" / "model.onnx")
    assert pixel_input_of(model) == ("image", TensorProto.UINT8, ["batch", "image_height", "image_width", 3])
    assert {"Cast", "Shape", "Resize", "Pad", "Gather", "Mul", "Add"} <= set(preprocessing_nodes(model))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # standard ONNX for TensorRT's parser
    assert manifest(bundle)["verification"]["status"] == "unverified"


def test_profile_is_a_band_around_the_reference_size(bundle: Path) -> None:
    settings = manifest(bundle)["artifact"]["settings"]
    # Reference [1, 20, 24, 3] (height 20, width 24: the resize size); batch up to 8.
    assert settings["profiles"] == {"image": {"min": [1, 10, 12, 3], "opt": [1, 20, 24, 3], "max": [8, 40, 48, 3]}}
    assert settings["fit_to_profile"] == ["image"]


def test_explicit_profile_wins(tmp_path: Path) -> None:
    given = {"min": [1, 8, 8, 3], "opt": [2, 480, 640, 3], "max": [4, 1080, 1920, 3]}
    bundle = compile_target(tmp_path, "tensorrt", build={"options": {"tensorrt": {"profiles": {"image": given}}}})
    settings = manifest(bundle)["artifact"]["settings"]
    assert settings["profiles"] == {"image": given} and settings["fit_to_profile"] == ["image"]


def test_fp16_variant_compiles_with_the_pixels_kept_uint8(tmp_path: Path) -> None:
    bundle = compile_target(tmp_path, "tensorrt", build={"precision": "fp16"})
    model = onnx.load(bundle / "model" / "model.onnx")
    assert pixel_input_of(model)[1] == TensorProto.UINT8
    assert manifest(bundle)["verification"]["outputs"]["probs"]["cosine"] > 0.999


def adapter_module() -> types.ModuleType:
    """templates/tensorrt/runtime.py without a bundle: its ``runner.trt_builder`` import stubbed."""
    stub = types.ModuleType("runner")
    stub.trt_builder = types.ModuleType("runner.trt_builder")  # type: ignore[attr-defined]
    saved = sys.modules.get("runner")
    sys.modules["runner"] = stub
    try:
        spec = importlib.util.spec_from_file_location("gpuxc_test_trt_runtime", RUNTIME)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        if saved is None:
            del sys.modules["runner"]
        else:
            sys.modules["runner"] = saved


@pytest.mark.parametrize("shape, want", [((2, 300, 451, 3), (2, 32, 48, 3)),  # too big: shrunk, aspect kept
                                         ((1, 5, 7, 3), (1, 10, 14, 3)),  # too small: grown
                                         ((1, 9, 200, 1), (1, 10, 48, 1)),  # too wide for both: clamped per axis
                                         ((1, 20, 24, 3), None)])  # inside: untouched  # fmt: skip
def test_fit_to_profile(shape: tuple[int, ...], want: tuple[int, ...] | None) -> None:
    fit = adapter_module().fit_to_profile
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    got = fit(pixels, [1, 10, 12, 3], [8, 40, 48, 3])
    assert (got is None) if want is None else (got.shape == want and got.dtype == np.uint8)


def test_numpy_fallback_is_onnx_bilinear() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (1, 31, 17, 3), dtype=np.uint8)
    got = adapter_module()._bilinear(pixels, 12, 40)
    want = np.clip(np.rint(resize_bilinear(pixels[0].astype(np.float64), 12, 40)), 0, 255)
    assert np.abs(got[0].astype(int) - want).max() <= 1


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_site(tmp_path_factory.mktemp("fake-site-pre"))


def test_contract_profile_and_fitted_shapes(fakes: Path, bundle: Path, tmp_path: Path) -> None:
    """The engine is built with the band as its profile; a photo-sized picture reaches it scaled into the band."""
    calls = run_with_fakes(fakes, bundle, f"""
        import json
        import numpy as np
        import runner, tensorrt
        # The stand-in computes no real numbers: the start-up self-check would (rightly) refuse it.
        rt = runner.load({str(bundle)!r}, self_check="off")
        rt.infer({{"image": np.zeros((1, 600, 900, 3), np.uint8)}})
        rt.infer({{"image": np.zeros((1, 20, 24, 3), np.uint8)}})
        print(json.dumps([list(c) for c in tensorrt.CALLS]))
    """, tmp_path)  # fmt: skip
    assert ["set_shape", "image", [1, 10, 12, 3], [1, 20, 24, 3], [8, 40, 48, 3]] in calls
    shapes = [c[2] for c in calls if c[0] == "set_input_shape"]
    assert shapes == [[1, 32, 48, 3], [1, 20, 24, 3]]
