"""openvino with image preprocessing: the IR's input is u8 [?, ?, ?, 3] and the IR computes what
the cpu bundle computes, on pictures of other sizes than the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.plugins.preprocess_project import compile_target, manifest

ov = pytest.importorskip("openvino", reason="the openvino target needs `pip install gpuxc[openvino]`")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ov-pre")
    return {t: compile_target(root / t, t) for t in ("openvino", "cpu")}


def test_ir_input_is_uint8_pixels_of_any_size(bundles: dict[str, Path]) -> None:
    model = ov.Core().read_model(str(next((bundles["openvino"] / "model").glob("*.xml"))))
    [pixels] = model.inputs
    assert pixels.get_any_name() == "image" and pixels.get_element_type() == ov.Type.u8
    assert str(pixels.get_partial_shape()) == "[?,?,?,3]"
    names = [op.get_friendly_name() for op in model.get_ordered_ops()]
    assert any(n.startswith("gpuxc_pre/resize") for n in names) and any(n.startswith("gpuxc_pre/letterbox")
                                                                         for n in names)  # fmt: skip
    assert manifest(bundles["openvino"])["verification"]["status"] == "passed"


def test_ir_equals_the_cpu_bundle_on_other_sizes(bundles: dict[str, Path]) -> None:
    settings = manifest(bundles["openvino"])["artifact"]["settings"]
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": settings.get("inference_precision", "f32")}
    compiled = core.compile_model(str(next((bundles["openvino"] / "model").glob("*.xml"))), "CPU", config)
    session = ort.InferenceSession(str(bundles["cpu"] / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    for height, width in ((31, 17), (64, 9)):
        pixels = np.random.default_rng(width).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        got = compiled({"image": pixels})[compiled.outputs[0]]
        [want] = session.run(None, {"image": pixels})
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
