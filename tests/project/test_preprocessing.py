"""gpux.yml's ``preprocessing`` block: the schema (gpuxc/project/config_preprocessing.py) and its
resolution against the model (gpuxc/project/preprocessing.py). Every error names ``file:line:column``
of the field at fault, as the rest of gpux.yml's errors do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fixtures import has_module
from fixtures.models import signature
from gpuxc.errors import ConfigError, SignatureMismatch
from gpuxc.project.config import GpuxConfig
from gpuxc.project.config_load import load_config
from gpuxc.project.model import ModelSignature
from gpuxc.project.preprocessing import (
    ImagePreprocessing,
    TextPreprocessing,
    resolve_preprocessing,
    tokenizer_path,
)

MINIMAL = "name: demo\nmodel:\n  source: ./model.onnx\n"  # preprocessing: is line 4, its first key line 5

needs_tokenizers = pytest.mark.skipif(not has_module("tokenizers"), reason="needs the tokenizers package")


def config(folder: Path, block: str) -> GpuxConfig:
    path = folder / "gpux.yml"
    path.write_text(MINIMAL + block, encoding="utf-8")
    return load_config(path)


def schema_error(folder: Path, block: str) -> str:
    with pytest.raises(ConfigError) as info:
        config(folder, block)
    return str(info.value)


NCHW = signature(("pixel_values", "float32", ["N", 3, 224, 224]))
DYNAMIC = signature(("pixel_values", "float32", ["N", 3, "H", "W"]))
TEXT = signature(("input_ids", "int64", ["batch", "seq"]), ("attention_mask", "int64", ["batch", "seq"]))
FIXED_TEXT = signature(("input_ids", "int64", [1, 128]), ("attention_mask", "int64", [1, 128]))


def resolve_error(folder: Path, block: str, sig: ModelSignature, kind: type[ConfigError] = ConfigError) -> str:
    cfg = config(folder, block)
    with pytest.raises(kind) as info:
        resolve_preprocessing(cfg, sig)
    return str(info.value)


# -- the schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "where", "says"),
    [
        ("preprocessing:\n  resize: [224]\n", "5:11: preprocessing.resize", "resize takes [width, height], got 1"),
        ("preprocessing:\n  resize: [0, 224]\n", "5:12: preprocessing.resize[0]", "greater than or equal to 1"),
        ("preprocessing:\n  resize: [224, 99999]\n", "5:17: preprocessing.resize[1]", "less than or equal to 16384"),
        ("preprocessing:\n  resize: 224\n", "5:11: preprocessing.resize", "valid list, got an integer 224"),
        ("preprocessing:\n  normalize: imagenett\n", "5:14: preprocessing.normalize",
         "'imagenet', '0-1', '-1-1' or 'none', got a string 'imagenett'"),
        # A mapping is a {mean, std, scale} spec: its own errors, not "not 'imagenet'".
        ("preprocessing:\n  normalize:\n    mean: [0.5, 0.5]\n    std: [0.5]\n", "6:5: preprocessing.normalize",
         "normalize.mean and normalize.std take 1 or 3 values"),
        ("preprocessing:\n  normalize:\n    mean: [0.5]\n    std: [0]\n", "6:5: preprocessing.normalize",
         "normalize.std must not contain 0"),
        ("preprocessing:\n  normalize:\n    mean: [0.5]\n    std: [0.5]\n    scale: 0\n",
         "8:12: preprocessing.normalize.scale", "greater than 0"),
        ("preprocessing:\n  normalize:\n    mean: [0.5]\n    std: [0.5]\n    sclae: 1\n", "8:5: unknown key 'sclae'",
         "in preprocessing.normalize (did you mean 'scale'?)"),
        ("preprocessing:\n  normalize:\n    mean: [0.5]\n", "6:5: missing required key", "preprocessing.normalize.std"),
        ("preprocessing:\n  tokenizer: '  '\n", "5:14: preprocessing.tokenizer", "a path to a tokenizer.json"),
        ("preprocessing:\n  tokenizer: \"a\\0b\"\n", "5:14: preprocessing.tokenizer", "no NUL character"),
        ("preprocessing:\n  resize: [224, 224]\n  image_input: 'bad name!'\n", "6:16: preprocessing.image_input",
         "'bad name!' is not an input name"),
        ("preprocessing:\n  resize: [224, 224]\n  rezise_mode: letterbox\n", "6:3: unknown key 'rezise_mode'",
         "(did you mean 'resize_mode'?)"),
        ("preprocessing:\n  resize: [224, 224]\n  resize_mode: crop\n", "6:16: preprocessing.resize_mode",
         "'stretch', 'letterbox' or 'center-crop', got a string 'crop'"),
        ("preprocessing:\n  resize: [224, 224]\n  pad_value: 256\n", "6:14: preprocessing.pad_value",
         "less than or equal to 255"),
        ("preprocessing:\n  resize: [224, 224]\n  channels: RGB\n", "6:13: preprocessing.channels",
         "'rgb', 'bgr' or 'gray', got a string 'RGB'"),
        ("preprocessing:\n  resize: [224, 224]\n  layout: chw\n", "6:11: preprocessing.layout", "'nchw' or 'nhwc'"),
        ("preprocessing:\n  tokenizer: t.json\n  max_length: 0\n", "6:15: preprocessing.max_length",
         "greater than or equal to 1"),
        ("preprocessing:\n  tokenizer: t.json\n  truncation: 'no'\n", "6:15: preprocessing.truncation",
         "valid boolean, got a string 'no'"),
        ("preprocessing:\n  tokenizer: t.json\n  padding: max\n", "6:12: preprocessing.padding",
         "'max_length' or 'longest', got a string 'max'"),
        ("preprocessing:\n  tokenizer: t.json\n  ids_input: 3\n", "6:14: preprocessing.ids_input", "valid string"),
    ],
)
def test_schema_errors_name_the_field(in_tmp: Path, block: str, where: str, says: str) -> None:
    message = schema_error(in_tmp, block)
    assert message.startswith(f"gpux.yml:{where}"), message
    assert says in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("block", "where", "says"),
    [
        # Both kinds: the error is at the image field that came with a tokenizer.
        ("preprocessing:\n  tokenizer: tokenizer.json\n  resize: [224, 224]\n", "6:11: preprocessing.resize",
         "either for an image (resize, normalize) or for text (tokenizer), not both"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  normalize: imagenet\n", "6:14: preprocessing.normalize",
         "not both"),
        # A field of the other kind, or of no kind: at that field, never silently ignored.
        ("preprocessing:\n  resize: [224, 224]\n  max_length: 128\n", "6:15: preprocessing.max_length",
         "only for text: set preprocessing.tokenizer"),
        ("preprocessing:\n  max_length: 128\n", "5:15: preprocessing.max_length", "only for text"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  channels: bgr\n", "6:13: preprocessing.channels",
         "only for images: the block needs resize or normalize"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  image_input: pixels\n", "6:16: preprocessing.image_input",
         "only for images"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  resize_mode: letterbox\n",
         "6:16: preprocessing.resize_mode", "only for images"),
        ("preprocessing:\n  normalize: imagenet\n  padding: longest\n", "6:12: preprocessing.padding",
         "only for text: the block needs tokenizer"),
        ("preprocessing:\n  resize: [224, 224]\n  truncation: false\n", "6:15: preprocessing.truncation",
         "only for text"),
        ("preprocessing:\n  resize: [224, 224]\n  mask_input: attention_mask\n", "6:15: preprocessing.mask_input",
         "only for text"),
        ("preprocessing:\n  channels: rgb\n", "5:13: preprocessing.channels", "only for images"),
        ("preprocessing:\n  layout: nhwc\n", "5:11: preprocessing.layout", "only for images"),
        ("preprocessing:\n  input: x\n", "5:10: preprocessing.input",
         "no resize/normalize (an image) or tokenizer (text)"),
    ],
)
def test_fields_of_the_wrong_kind_are_refused_where_they_are(in_tmp: Path, block: str, where: str, says: str) -> None:
    message = schema_error(in_tmp, block)
    assert message.startswith(f"gpux.yml:{where}: "), message
    assert says in message, message
    assert "more problem" not in message, message


def test_a_field_failing_its_own_check_is_the_one_reported(in_tmp: Path) -> None:
    # resize is invalid, so channels cannot tell the block's kind: only resize's error is reported.
    message = schema_error(in_tmp, "preprocessing:\n  resize: [1, 2, 3]\n  channels: bgr\n")
    assert message == "gpux.yml:5:11: preprocessing.resize: resize takes [width, height], got 3 values", message


def test_valid_blocks_are_read(in_tmp: Path) -> None:
    image = config(in_tmp, "preprocessing:\n  resize: [320, 240]\n  normalize:\n    mean: [0.5]\n    std: [0.25]\n"
                           "    scale: 1\n  channels: bgr\n  layout: nhwc\n  resize_mode: letterbox\n  pad_value: 114\n"
                           "  image_input: pixels\n  input: x\n").preprocessing  # fmt: skip
    assert image.kind == "image" and image.resize == [320, 240] and image.pad_value == 114
    assert image.normalize is not None and not isinstance(image.normalize, str) and image.normalize.scale == 1
    text = config(in_tmp, "preprocessing:\n  tokenizer: tok/\n  max_length: 64\n  padding: longest\n"
                          "  truncation: false\n  ids_input: ids\n  mask_input: mask\n").preprocessing  # fmt: skip
    assert text.kind == "text" and text.max_length == 64 and text.truncation is False
    assert config(in_tmp, "preprocessing: {}\n").preprocessing.kind is None
    assert config(in_tmp, "preprocessing:\n  normalize: imagenet\n").preprocessing.kind == "image"


# -- images, settled against the model ------------------------------------------------------------


def test_image_defaults_are_read_off_the_model(in_tmp: Path) -> None:
    pre = resolve_preprocessing(config(in_tmp, "preprocessing:\n  normalize: imagenet\n"), NCHW)
    assert isinstance(pre, ImagePreprocessing)
    assert (pre.input, pre.feeds, pre.layout, pre.channels, pre.channel_count) == ("image", "pixel_values", "nchw",
                                                                                  "rgb", 3)  # fmt: skip
    assert pre.size == [224, 224] and pre.scale == 255.0 and pre.mean == [0.485, 0.456, 0.406]
    bgr = resolve_preprocessing(config(in_tmp, "preprocessing:\n  normalize: imagenet\n  channels: bgr\n"), NCHW)
    assert isinstance(bgr, ImagePreprocessing) and bgr.mean == [0.406, 0.456, 0.485]
    gray = resolve_preprocessing(config(in_tmp, "preprocessing:\n  normalize: 0-1\n"),
                                 signature(("x", "float32", [1, "H", "W", 1])))  # fmt: skip
    assert isinstance(gray, ImagePreprocessing) and (gray.layout, gray.channels, gray.size) == ("nhwc", "gray", None)
    assert resolve_preprocessing(config(in_tmp, "preprocessing: {}\n"), NCHW) is None


@pytest.mark.parametrize(
    ("block", "sig", "kind", "where", "says"),
    [
        # Preprocessing on an input of the wrong dtype: named, or the model's only input.
        ("preprocessing:\n  resize: [8, 8]\n  input: ids\n", signature(("ids", "int64", [1, 3, 8, 8])),
         SignatureMismatch, "6:10", "feeds model input 'ids', which is int64: it needs a float input"),
        ("preprocessing:\n  resize: [8, 8]\n", signature(("x", "int32", [1, 3, 8, 8])), SignatureMismatch, "5:3",
         "which is int32"),
        ("preprocessing:\n  normalize: imagenet\n", signature(("x", "float32", [1, 3, 224])), SignatureMismatch,
         "5:3", "of shape [1, 3, 224]: it needs rank 4"),
        ("preprocessing:\n  normalize: imagenet\n", signature(("x", "float32", None)), SignatureMismatch, "5:3",
         "[unknown rank]"),
        ("preprocessing:\n  normalize: imagenet\n", signature(("x", "float32", [1, 5, 5, 5])), ConfigError, "5:3",
         "cannot tell the layout of model input 'x' [1, 5, 5, 5] (no channel dim of 1 or 3): set preprocessing.layout"),
        # A wrong channel count: the model's against the channels given, or against the layout given.
        ("preprocessing:\n  normalize: imagenet\n  channels: gray\n", NCHW, SignatureMismatch, "6:13",
         "has 3 channels (nchw [N, 3, 224, 224]), but preprocessing gives 1 (gray)"),
        ("preprocessing:\n  normalize: imagenet\n  layout: nhwc\n", NCHW, SignatureMismatch, "5:3",
         "has 224 channels (nhwc"),
        # A resize that contradicts the model's fixed input shape.
        ("preprocessing:\n  resize: [224, 200]\n", NCHW, SignatureMismatch, "5:11",
         "resize [224, 200] (width, height) contradicts model input 'pixel_values''s fixed height 224"),
        ("preprocessing:\n  resize: [256, 224]\n", NCHW, SignatureMismatch, "5:11", "fixed width 224"),
        ("preprocessing:\n  normalize: imagenet\n  resize_mode: letterbox\n", DYNAMIC, ConfigError, "6:16",
         "resize_mode letterbox needs a size: set preprocessing.resize"),
        ("preprocessing:\n  normalize:\n    mean: [0.5, 0.5, 0.5]\n    std: [0.5]\n",
         signature(("x", "float32", [1, 1, 28, 28])), ConfigError, "6:5", "but the model input has 1 channel"),
        ("preprocessing:\n  normalize: imagenet\n  image_input: scale\n",
         signature(("pixel_values", "float32", [1, 3, 8, 8]), ("scale", "float32", [1])), ConfigError, "6:16",
         "image_input 'scale' is already another model input"),
        ("preprocessing:\n  normalize: imagenet\n",
         signature(("a", "float32", [1, 3, 8, 8]), ("b", "float32", [1, 3, 8, 8])), ConfigError, "5:3",
         "several inputs look like an image (float, rank 4, 1 or 3 channels): name one with preprocessing.input"),
        ("preprocessing:\n  normalize: imagenet\n",
         signature(("a", "float32", [1, 8]), ("b", "int64", [1, 8])), ConfigError, "5:3", "no input looks like"),
        ("preprocessing:\n  normalize: imagenet\n  input: pixel_value\n", NCHW, SignatureMismatch, "6:10",
         "'pixel_value' is not a model input (did you mean 'pixel_values'?)"),
    ],
)
def test_image_resolution_errors(in_tmp: Path, block: str, sig: ModelSignature, kind: type[ConfigError], where: str,
                                 says: str) -> None:  # fmt: skip
    message = resolve_error(in_tmp, block, sig, kind)
    assert message.startswith(f"gpux.yml:{where}: "), message
    assert says in message, message
    assert "\n" not in message


# -- text, settled against the model --------------------------------------------------------------


def test_text_defaults_are_read_off_the_model(in_tmp: Path, tokenizer: Path) -> None:
    pre = resolve_preprocessing(config(in_tmp, "preprocessing:\n  tokenizer: tokenizer.json\n"), TEXT)
    assert isinstance(pre, TextPreprocessing)
    assert (pre.ids, pre.mask, pre.type_ids, pre.dtype) == ("input_ids", "attention_mask", None, "int64")
    assert (pre.max_length, pre.padding, pre.tokenizer) == (512, "longest", "preprocessing/tokenizer.json")
    fixed = resolve_preprocessing(config(in_tmp, "preprocessing:\n  tokenizer: .\n"), FIXED_TEXT)
    assert isinstance(fixed, TextPreprocessing) and (fixed.max_length, fixed.padding) == (128, "max_length")


def test_tokenizer_path_takes_a_file_or_a_folder(in_tmp: Path, tokenizer: Path) -> None:
    assert tokenizer_path(config(in_tmp, "preprocessing:\n  tokenizer: tokenizer.json\n")) == tokenizer.resolve()
    assert tokenizer_path(config(in_tmp, "preprocessing:\n  tokenizer: ./\n")) == tokenizer.resolve()


@pytest.mark.parametrize(
    ("block", "sig", "kind", "where", "says"),
    [
        ("preprocessing:\n  tokenizer: bert-base-uncased\n", TEXT, ConfigError, "5:14",
         "preprocessing.tokenizer 'bert-base-uncased' is not a file in the project: gpuxc never downloads"),
        ("preprocessing:\n  tokenizer: empty\n", TEXT, ConfigError, "5:14", "tokenizer 'empty' is not a file"),
        ("preprocessing:\n  tokenizer: " + "x" * 5000 + "\n", TEXT, ConfigError, "5:14", "cannot be opened"),
        ("preprocessing:\n  tokenizer: broken.json\n", TEXT, ConfigError, "5:14",
         "'broken.json' is not a tokenizers tokenizer.json"),
        # Token inputs of the wrong dtype: at the field that named it, or at the block when found by name.
        ("preprocessing:\n  tokenizer: tokenizer.json\n  ids_input: x\n", signature(("x", "float32", [1, 8])),
         SignatureMismatch, "6:14", "feeds model input 'x', which is float32: token inputs must be int64 or int32"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  input: x\n", signature(("x", "float32", [1, 8])),
         SignatureMismatch, "6:10", "which is float32"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  mask_input: m\n",
         signature(("input_ids", "int64", [1, 8]), ("m", "float32", [1, 8])), SignatureMismatch, "6:15",
         "feeds model input 'm', which is float32"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n",
         signature(("input_ids", "int64", [1, 8]), ("token_type_ids", "int64", [1, 8, 1])), SignatureMismatch, "5:3",
         "'token_type_ids' of shape [1, 8, 1]"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n", signature(("input_ids", "int64", [1, 8, 2])),
         SignatureMismatch, "5:3", "of shape [1, 8, 2]: token inputs are [batch, sequence]"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  max_length: 64\n", FIXED_TEXT, SignatureMismatch, "6:15",
         "max_length 64 contradicts the model's fixed sequence length 128"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  padding: longest\n", FIXED_TEXT, ConfigError, "6:12",
         "padding: longest, but the model fixes the sequence length to 128: use padding: max_length"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n",
         signature(("a", "int64", [1, 8]), ("b", "int64", [1, 8])), ConfigError, "5:3",
         "cannot tell which model input takes the token ids (inputs: a, b): set preprocessing.ids_input"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  ids_input: input_id\n", TEXT, SignatureMismatch, "6:14",
         "'input_id' is not a model input (did you mean 'input_ids'?)"),
        ("preprocessing:\n  tokenizer: tokenizer.json\n  mask_input: mask\n", TEXT, SignatureMismatch, "6:15",
         "'mask' is not a model input"),
    ],
)
def test_text_resolution_errors(in_tmp: Path, tokenizer: Path, block: str, sig: ModelSignature,
                                kind: type[ConfigError], where: str, says: str) -> None:  # fmt: skip
    (in_tmp / "empty").mkdir()
    (in_tmp / "broken.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")
    message = resolve_error(in_tmp, block, sig, kind)
    assert message.startswith(f"gpux.yml:{where}: "), message
    assert says in message, message
    assert "\n" not in message


def test_text_without_the_tokenizers_package_says_what_to_install(in_tmp: Path, tokenizer: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers now raises ImportError
    with pytest.raises(ConfigError) as info:
        resolve_preprocessing(config(in_tmp, "preprocessing:\n  tokenizer: tokenizer.json\n"), TEXT)
    assert str(info.value).startswith("gpux.yml:5:14: text preprocessing needs the 'tokenizers' package")
    assert info.value.hint == "pip install 'gpuxc[text]'"
