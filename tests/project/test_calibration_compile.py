"""Issue 14, done means: ``int8-static`` calibrates from a folder of JPEGs with no npz written by hand.

End to end through ``compile_project``: photos from scikit-image saved as JPEG, an image
preprocessing block, static int8 on the cpu target (ONNX Runtime's quantizer) and on openvino
(NNCF); text the same way from a .txt file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import has_module, models
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle import layout

pytestmark = [
    pytest.mark.skipif(not (has_module("PIL") and has_module("skimage")), reason="photos from scikit-image, Pillow"),
]

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def image_project(folder: Path, target: str, extra: str = "") -> Path:
    import skimage.data
    from PIL import Image

    (folder / "photos").mkdir(parents=True)
    for i, name in enumerate(PHOTOS):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / "photos" / f"{i}_{name}.jpg", "JPEG")
    models.save(models.tiny_cnn(), folder / "model.onnx")  # image float32[N, 3, 32, 32] -> logits[N, 4]
    (folder / "gpux.yml").write_text(
        "name: photos\nmodel:\n  source: ./model.onnx\npreprocessing:\n  resize: [32, 32]\n  normalize: imagenet\n"
        f"build:\n  targets: [{target}]\n  precision: int8-static\n  calibration:\n    data: photos\n"
        "    samples: 4\n" + extra,
        encoding="utf-8",
    )
    return folder


def manifest(bundle: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((bundle / layout.MANIFEST_NAME).read_text(encoding="utf-8"))


def test_int8_static_calibrates_from_a_folder_of_jpegs(tmp_path: Path) -> None:
    project = image_project(tmp_path / "project", "cpu")
    [result] = compile_project(project, ["cpu"], tmp_path / "dist", use_cache=False)
    doc = manifest(result.path)
    [quantize] = [p for p in doc["build"]["passes"] if p["name"] == "quantize-static"]
    assert quantize["status"] == "applied", quantize
    assert quantize["stats"]["calibration"] == "data: photos" and quantize["stats"]["samples"] == 4
    assert not [w for w in quantize.get("warnings", []) if "random" in w]
    # The reference and the validation samples are the photos after the 4 calibrated on.
    assert doc["reference"]["origin"] == "calibration" and doc["reference"]["calibration_overlap"] is False
    assert doc["verification"]["status"] == "passed", doc["verification"]
    assert [i["name"] for i in doc["inputs"]] == ["image"] and doc["inputs"][0]["dtype"] == "uint8"


@pytest.mark.skipif(not (has_module("openvino") and has_module("nncf")), reason="needs openvino and nncf")
def test_openvino_int8_calibrates_with_nncf_from_a_folder_of_jpegs(tmp_path: Path) -> None:
    # NNCF's int8 on this 8-channel random-weight CNN reaches cosine 0.985 on its 4 logits (the same
    # photos as hand-written .npz samples give the same figure): the gate is loosened, since what is
    # tested is NNCF calibrating on the photos, not int8's accuracy on a toy model.
    loose = "  tolerance:\n    atol: 0.5\n    rtol: 0.5\n    min_cosine: 0.98\n"
    project = image_project(tmp_path / "project", "openvino", loose)
    [result] = compile_project(project, ["openvino"], tmp_path / "dist", use_cache=False)
    doc = manifest(result.path)
    assert doc["verification"]["status"] == "passed", doc["verification"]
    assert doc["reference"]["origin"] == "calibration" and doc["artifact"]["requires_isa"] == ["INT8"]


@pytest.mark.skipif(not has_module("tokenizers"), reason="needs the tokenizers package")
def test_int8_static_calibrates_text_models_from_a_text_file(tmp_path: Path) -> None:
    from fixtures.text_models import write_tokenizer

    project = tmp_path / "project"
    project.mkdir()
    write_tokenizer(project / "tokenizer.json")
    models.save(models.int64_text_model(), project / "model.onnx")  # input_ids, attention_mask -> MatMul head
    words = ["the", "quick", "brown", "fox", "a", "short", "model"]
    lines = [" ".join(words[(i * 3 + k) % 7] for k in range(2 + i % 5)) for i in range(20)]
    (project / "calib.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (project / "gpux.yml").write_text(
        "name: text\nmodel:\n  source: ./model.onnx\npreprocessing:\n  tokenizer: tokenizer.json\n"
        "build:\n  targets: [cpu]\n  precision: int8-static\n  calibration:\n    data: calib.txt\n    samples: 16\n",
        encoding="utf-8",
    )
    [result] = compile_project(project, ["cpu"], tmp_path / "dist", use_cache=False)
    doc = manifest(result.path)
    [quantize] = [p for p in doc["build"]["passes"] if p["name"] == "quantize-static"]
    assert quantize["status"] == "applied" and quantize["stats"]["samples"] == 16, quantize
    assert doc["reference"]["origin"] == "calibration"
    assert doc["verification"]["status"] == "passed", doc["verification"]
