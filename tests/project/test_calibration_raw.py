"""Calibration from raw files (issue 14): a folder of photos or a text file, through the bundle's
own preprocessing. Signatures are built by hand: with image preprocessing, the samples feed the
model with the uint8 image input ``[N, height, width, C]`` that the compiled graph takes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from fixtures import has_module, models
from fixtures.models import signature
from gpuxc.errors import ConfigError
from gpuxc.project.calibration import load_samples, load_validation_samples
from gpuxc.project.config_load import load_config
from gpuxc.project.model import ModelSignature, describe
from gpuxc.project.preprocessing import ImagePreprocessing, TextPreprocessing, resolve_preprocessing

pytestmark = pytest.mark.skipif(not has_module("PIL"), reason="decoding images needs Pillow")


PREPENDED = signature(("image", "uint8", ["N", "height", "width", 3]))
RGB = ImagePreprocessing(input="image", feeds="pixel_values", channels="rgb", channel_count=3, layout="nchw",
                         size=[64, 64], resize_mode="stretch", pad_value=0, scale=255.0, mean=[0.485, 0.456, 0.406],
                         std=[0.229, 0.224, 0.225], dtype="float32")  # fmt: skip
TEXT = describe(models.int64_text_model(), sha256="", size_bytes=0, external=[])  # input_ids, attention_mask


def photos(folder: Path, names: tuple[str, ...] = ("astronaut", "coffee", "chelsea"), fmt: str = "JPEG") -> Path:
    """skimage's photos saved as real image files, named 0_astronaut.jpg, 1_coffee.jpg, ..."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    suffix = {"JPEG": ".jpg", "PNG": ".png"}[fmt]
    for i, name in enumerate(names):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{i}_{name}{suffix}", fmt)
    return folder


def decoded(path: Path, mode: str = "RGB") -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert(mode))


def error(data: Path, sig: ModelSignature = PREPENDED, record: object = RGB, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_samples(data, sig, 8, where="gpux.yml:9:11", preprocessing=record, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("gpux.yml:9:11: ") and "\n" not in message, message
    return message


needs_skimage = pytest.mark.skipif(not has_module("skimage"), reason="photos come from scikit-image")


# -- images ---------------------------------------------------------------------------------------


@needs_skimage
def test_a_folder_of_jpegs_becomes_uint8_pixels_at_their_own_sizes(tmp_path: Path) -> None:
    folder = photos(tmp_path / "calib")
    (folder / "notes.md").write_text("not an image")
    samples = load_samples(folder, PREPENDED, 8, preprocessing=RGB)
    assert [list(s) for s in samples] == [["image"]] * 3
    assert [s["image"].shape for s in samples] == [(1, 512, 512, 3), (1, 400, 600, 3), (1, 300, 451, 3)]
    assert all(s["image"].dtype == np.uint8 for s in samples)
    np.testing.assert_array_equal(samples[1]["image"][0], decoded(folder / "1_coffee.jpg"))
    assert len(load_samples(folder, PREPENDED, 2, preprocessing=RGB)) == 2  # the first two, by file name


@needs_skimage
def test_gray_models_get_one_channel_and_alpha_is_dropped(tmp_path: Path) -> None:
    from PIL import Image

    folder = photos(tmp_path / "calib", ("astronaut",), "PNG")
    rgba = np.dstack([np.full((20, 30, 3), 200, np.uint8), np.full((20, 30), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "1_alpha.png")
    [astronaut, alpha] = load_samples(folder, PREPENDED, 8, preprocessing=RGB)
    assert alpha["image"].shape == (1, 20, 30, 3) and int(alpha["image"].max()) == 200
    gray = RGB.model_copy(update={"channels": "gray", "channel_count": 1, "mean": [0.449], "std": [0.226]})
    sig = signature(("image", "uint8", ["N", "height", "width", 1]))
    [first, _] = load_samples(folder, sig, 8, preprocessing=gray)
    assert first["image"].shape == (1, 512, 512, 1)
    np.testing.assert_array_equal(first["image"][0, :, :, 0], decoded(folder / "0_astronaut.png", "L"))


@needs_skimage
def test_a_fixed_image_size_is_met_by_resizing_as_the_runner_does(tmp_path: Path) -> None:
    # Static-shape targets (coreml) fix the uint8 input's height and width to the reference's.
    from PIL import Image

    folder = photos(tmp_path / "calib", ("coffee",))  # 600x400
    sig = signature(("image", "uint8", [1, 64, 96, 3]))
    [sample] = load_samples(folder, sig, 8, preprocessing=RGB)
    with Image.open(folder / "0_coffee.jpg") as img:
        expected = np.asarray(img.convert("RGB").resize((96, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(sample["image"][0], expected)
    # letterbox: the aspect ratio kept (600x400 into 64x64: 64x43 centred on pad_value rows)
    boxed = RGB.model_copy(update={"resize_mode": "letterbox", "pad_value": 114})
    [sample] = load_samples(folder, signature(("image", "uint8", [1, 64, 64, 3])), 8, preprocessing=boxed)
    assert sample["image"].shape == (1, 64, 64, 3)
    assert (sample["image"][0, :10] == 114).all() and (sample["image"][0, -10:] == 114).all()
    assert not (sample["image"][0, 30] == 114).all()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "calibration image 'calib/bad.jpg': the image is empty (0 bytes)"),
        (b"this is not a picture", "calibration image 'calib/bad.jpg': not an image Pillow can decode"),
        ("truncated", "calibration image 'calib/bad.jpg': the image cannot be decoded ("),
    ],
)
def test_an_undecodable_or_truncated_image_is_an_error_naming_the_file(tmp_path: Path, content: object,
                                                                        says: str) -> None:  # fmt: skip
    from PIL import Image

    folder = tmp_path / "calib"
    folder.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(folder / "a_good.jpg")
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    assert isinstance(content, bytes)
    (folder / "bad.jpg").write_bytes(content)
    assert says in error(folder)


def test_images_beside_tensors_or_without_preprocessing_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "calib"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    assert "holds images: calibrating on images needs an image preprocessing block" in error(folder, record=None)
    np.savez(folder / "b.npz", image=np.zeros((1, 8, 8, 3), np.uint8))
    assert "mixes images and .npz/.npy files ('b.npz'); use one kind" in error(folder)


def test_images_for_a_model_with_other_inputs_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "calib"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    sig = signature(("image", "uint8", ["N", "height", "width", 3]), ("threshold", "float32", [1]))
    message = error(folder, sig)
    assert "calibration images feed only 'image'; the model also takes 'threshold': give .npz samples" in message
    source = signature(("pixel_values", "float32", [1, 3, 64, 64]))  # not the prepended model's signature
    assert "feed model input 'image', which the model does not have (inputs: pixel_values)" in error(folder, source)


def test_a_folder_without_images_says_what_it_wanted(tmp_path: Path) -> None:
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "readme.txt").write_text("hello")
    message = error(tmp_path / "calib")
    assert "calibration folder 'calib' holds no images (.jpg, .png, ...) and no .npz/.npy files" in message
    (tmp_path / "photo.bin").write_bytes(b"\x00")
    message = error(tmp_path / "photo.bin")
    assert "'photo.bin' is not an .npz file or a folder of images or of .npz/.npy files" in message


def test_npz_samples_keep_working_with_preprocessing(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (3, 1, 32, 48, 3), np.uint8)
    np.savez(tmp_path / "calib.npz", image=pixels)
    samples = load_samples(tmp_path / "calib.npz", PREPENDED, 8, preprocessing=RGB)
    assert len(samples) == 3
    np.testing.assert_array_equal(samples[2]["image"], pixels[2])


@needs_skimage
def test_validation_and_reference_images_are_the_ones_after_the_calibration_samples(tmp_path: Path) -> None:
    photos(tmp_path / "calib", ("astronaut", "coffee", "chelsea", "rocket"))
    (tmp_path / "gpux.yml").write_text("name: demo\nmodel:\n  source: ./model.onnx\npreprocessing:\n"
                                       "  normalize: imagenet\nbuild:\n  calibration:\n    data: calib\n"
                                       "    samples: 2\n")  # fmt: skip
    config = load_config(tmp_path / "gpux.yml")
    record = resolve_preprocessing(config, signature(("pixel_values", "float32", ["N", 3, "H", "W"])))
    validation, overlap = load_validation_samples(config, PREPENDED, 5, preprocessing=record)
    assert not overlap
    assert [v["image"].shape for v in validation] == [(1, 300, 451, 3), (1, 427, 640, 3)]


# -- text -----------------------------------------------------------------------------------------


def text_record(**changes: object) -> TextPreprocessing:
    record = TextPreprocessing(tokenizer="preprocessing/tokenizer.json", max_length=16, padding="longest",
                               truncation=True, ids="input_ids", mask="attention_mask", type_ids=None, dtype="int64")
    return record.model_copy(update=changes)


def test_a_text_file_becomes_token_feeds_one_line_each(tmp_path: Path, tokenizer: Path) -> None:
    data = tmp_path / "calib.txt"
    data.write_text("the quick brown fox a short model\n\n   \na fox\r\nthe short brown model\n", encoding="utf-8")
    samples = load_samples(data, TEXT, 8, preprocessing=text_record(), tokenizer=tokenizer)
    assert len(samples) == 3  # blank lines are not samples
    # [CLS]=2 the=4 quick=5 brown=6 fox=7 a=8 short=9 model=10 [SEP]=3; padding: longest, each its own length
    np.testing.assert_array_equal(samples[0]["input_ids"], [[2, 4, 5, 6, 7, 8, 9, 10, 3]])
    np.testing.assert_array_equal(samples[1]["input_ids"], [[2, 8, 7, 3]])
    np.testing.assert_array_equal(samples[1]["attention_mask"], [[1, 1, 1, 1]])
    assert samples[1]["input_ids"].dtype == np.int64
    fixed = load_samples(data, TEXT, 1, preprocessing=text_record(padding="max_length"), tokenizer=tokenizer)
    assert fixed[0]["input_ids"].shape == (1, 16) and int(fixed[0]["attention_mask"].sum()) == 9


def test_text_files_are_checked_line_by_line(tmp_path: Path, tokenizer: Path) -> None:
    data = tmp_path / "calib.txt"
    data.write_text("the fox\n" + " ".join(["fox"] * 40) + "\n", encoding="utf-8")
    message = error(data, TEXT, text_record(truncation=False), tokenizer=tokenizer)
    assert "'calib.txt' line 2: 42 tokens, over max_length 16 (this bundle does not truncate)" in message
    assert len(load_samples(data, TEXT, 8, preprocessing=text_record(), tokenizer=tokenizer)) == 2  # truncated
    data.write_bytes(b"the fox\n\xff\xfe fox\n")
    assert "'calib.txt' line 2 is not UTF-8 text (byte 0xff)" in error(data, TEXT, text_record(), tokenizer=tokenizer)
    data.write_text("\n  \n", encoding="utf-8")
    assert "'calib.txt' holds no text (one sample per non-blank line)" in error(data, TEXT, text_record(),
                                                                                tokenizer=tokenizer)  # fmt: skip


def test_an_overlong_line_is_refused_before_the_tokenizer(tmp_path: Path, tokenizer: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from gpuxc.project import calibration_raw

    monkeypatch.setattr(calibration_raw, "MAX_LINE_CHARS", 10)
    data = tmp_path / "calib.txt"
    data.write_text("the fox\n" + "é" * 11 + "\n", encoding="utf-8")  # 11 characters, 22 bytes
    message = error(data, TEXT, text_record(), tokenizer=tokenizer)
    assert "'calib.txt' line 2: over the limit of 10 characters" in message
    data.write_text("the fox\n" + "a" * 50, encoding="utf-8")  # more bytes than 10 characters can take
    assert "'calib.txt' line 2: over the limit" in error(data, TEXT, text_record(), tokenizer=tokenizer)


def test_text_needs_text_preprocessing_and_a_tokenizer_that_parses(tmp_path: Path, tokenizer: Path) -> None:
    data = tmp_path / "calib.txt"
    data.write_text("the fox\n", encoding="utf-8")
    assert "is text: calibrating on text needs a text preprocessing block" in error(data, TEXT, None)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    assert "broken.json: cannot load the tokenizer" in error(data, TEXT, text_record(), tokenizer=broken)
    sig = signature(("input_ids", "int64", [1, "seq"]), ("attention_mask", "int64", [1, "seq"]),
                    ("position_ids", "int64", [1, "seq"]))  # fmt: skip
    assert "the model also takes 'position_ids'" in error(data, sig, text_record(), tokenizer=tokenizer)
    (tmp_path / "calib.csv").write_text("the fox\n", encoding="utf-8")
    assert "'calib.csv' is not an .npz file, a .txt file (one text per line) or a folder" in error(
        tmp_path / "calib.csv", TEXT, text_record(), tokenizer=tokenizer)


def test_text_validation_samples_use_the_projects_tokenizer(tmp_path: Path, tokenizer: Path) -> None:
    (tmp_path / "calib.txt").write_text("the fox\na fox\nthe model\nthe quick brown fox\n", encoding="utf-8")
    (tmp_path / "gpux.yml").write_text("name: demo\nmodel:\n  source: ./model.onnx\npreprocessing:\n"
                                       "  tokenizer: tokenizer.json\nbuild:\n  calibration:\n    data: calib.txt\n"
                                       "    samples: 3\n")  # fmt: skip
    config = load_config(tmp_path / "gpux.yml")
    record = resolve_preprocessing(config, TEXT)
    validation, overlap = load_validation_samples(config, TEXT, 4, preprocessing=record)
    assert not overlap and len(validation) == 1
    np.testing.assert_array_equal(validation[0]["input_ids"], [[2, 4, 5, 6, 7, 3]])  # [CLS] the quick brown fox [SEP]
