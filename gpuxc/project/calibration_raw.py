"""Calibration samples from raw files: a folder of photos, or a text file with one sample per line.

With a ``preprocessing`` block, ``build.calibration.data`` may hold what the bundle will be sent
rather than tensors, and it goes through the bundle's own preprocessing
(``templates/runner/preprocess.py``, loaded with ``runner_module``), so the quantizers calibrate
on exactly what the deployed bundle computes:

- images (JPEG, PNG, WebP, BMP, GIF, TIFF) become the uint8 pixels ``[1, H, W, C]`` of the
  preprocessing record's input; each keeps its own size (the graph resizes), except where the
  model fixes height and width (static-shape targets), where it is brought to that size as the
  runner does (``resize_pixels``: Pillow bilinear, in the block's ``resize_mode``);
- text lines become token ids, attention mask and token type ids, tokenised with the project's
  tokenizer.json, padded and truncated as the bundle will.

Every bad file is one ``ConfigError`` line naming it (and the line, for text).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpuxc.bundle.runner_source import runner_module
from gpuxc.errors import ConfigError
from gpuxc.project.preprocessing import text_encoder

if TYPE_CHECKING:
    from gpuxc.project.model import ModelSignature
    from gpuxc.project.preprocessing import ImagePreprocessing, TextPreprocessing

__all__ = ["TEXT_SUFFIXES", "has_images", "load_images", "load_texts"]

Sample = dict[str, np.ndarray]
TEXT_SUFFIXES = (".txt",)
# A line longer than this is not a sample someone meant (a binary file read as text, a whole
# document on one line): refused before it reaches the tokenizer.
MAX_LINE_CHARS = 1_000_000


def has_images(folder: Path) -> bool:
    """Whether ``folder`` holds image files (by suffix), the sign that it is raw calibration data."""
    return bool(runner_module("preprocess").image_files(folder))


def load_images(folder: Path, record: ImagePreprocessing, signature: ModelSignature, samples: int,
                prefix: str) -> list[Sample]:  # fmt: skip
    """At most ``samples`` images of ``folder`` (sorted by name) as ``{record.input: uint8 [1, H, W, C]}``."""
    preprocess = runner_module("preprocess")
    _only_inputs(signature, [record.input], "images", prefix)
    files: list[Path] = preprocess.image_files(folder)
    tensor = signature.input(record.input)
    assert tensor is not None
    fixed = _fixed_size(tensor.shape)
    out: list[Sample] = []
    for path in files[:samples]:
        label = f"'{folder.name}/{path.name}'"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{prefix}cannot read {label} ({exc.strerror})") from None
        try:
            pixels = preprocess.decode_image(data, record.channels, label)
        except preprocess.PreprocessError as exc:
            raise ConfigError(f"{prefix}calibration image {exc}") from None
        if pixels.shape[-1] != record.channel_count:  # decode_image converts; a mismatch is a bug, said plainly
            raise ConfigError(f"{prefix}calibration image {label} has {pixels.shape[-1]} channels, the model takes "
                              f"{record.channel_count}")  # fmt: skip
        if fixed is not None and tuple(pixels.shape[1:3]) != fixed:  # the runner's own fit, in resize_mode
            pixels = preprocess.resize_pixels(pixels, (fixed[1], fixed[0]), record.resize_mode, record.pad_value)
        out.append({record.input: pixels})
    return out


def load_texts(path: Path, record: TextPreprocessing, tokenizer: Path, signature: ModelSignature, samples: int,
               prefix: str) -> list[Sample]:  # fmt: skip
    """At most ``samples`` non-blank lines of ``path`` as token feeds, one text per sample."""
    preprocess = runner_module("preprocess")
    names = [n for n in (record.ids, record.mask, record.type_ids) if n is not None]
    _only_inputs(signature, names, "text", prefix)
    try:
        encoder = text_encoder(record, tokenizer)
    except preprocess.PreprocessError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
    out: list[Sample] = []
    for number, line in _lines(path, prefix):
        if len(out) >= samples:
            break
        try:
            out.append(encoder.encode(line, label=f"'{path.name}' line {number}"))
        except preprocess.PreprocessError as exc:
            raise ConfigError(f"{prefix}{exc}") from None
    if not out:
        raise ConfigError(f"{prefix}'{path.name}' holds no text (one sample per non-blank line)")
    return out


def _lines(path: Path, prefix: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines, read lazily: only as many as are needed. Decoded
    line by line, so that a byte that is not UTF-8 is reported on its own line."""
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_CHARS * 4 + 1), b""), 1):
                too_long = f"{prefix}'{path.name}' line {number}: over the limit of {MAX_LINE_CHARS} characters"
                if len(raw) > MAX_LINE_CHARS * 4:  # 4 bytes per character at most: the line goes on
                    raise ConfigError(too_long)
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise ConfigError(f"{prefix}'{path.name}' line {number} is not UTF-8 text (byte "
                                      f"0x{raw[exc.start]:02x})") from None  # fmt: skip
                if len(text) > MAX_LINE_CHARS:
                    raise ConfigError(too_long)
                if text.strip():
                    yield number, text
    except OSError as exc:
        raise ConfigError(f"{prefix}cannot read '{path.name}' ({exc.strerror})") from None


def _only_inputs(signature: ModelSignature, fed: list[str], what: str, prefix: str) -> None:
    """Raw samples feed only the preprocessed inputs: a model with more needs .npz samples."""
    names = [t.name for t in signature.inputs]
    missing = [n for n in fed if n not in names]
    if missing:
        raise ConfigError(f"{prefix}calibration {what} feed model input '{missing[0]}', which the model does not "
                          f"have (inputs: {', '.join(names)})")  # fmt: skip
    others = [n for n in names if n not in fed]
    if others:
        raise ConfigError(
            f"{prefix}calibration {what} feed only {', '.join(repr(n) for n in fed)}; the model also takes "
            f"{', '.join(repr(n) for n in others)}: give .npz samples with every input instead"
        )


def _fixed_size(shape: list[int | str | None] | None) -> tuple[int, int] | None:
    """(height, width) when the image input ``[N, H, W, C]`` fixes both, else None."""
    if shape is None or len(shape) != 4:
        return None
    height, width = shape[1], shape[2]
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    return None
