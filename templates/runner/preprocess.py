"""Turning what people send into what the model takes: image files into pixels, text into tokens.

The manifest's ``preprocessing`` record (written by gpuxc/project/preprocessing.py) says what to do.
Images: the *graph* does the resize, normalisation and layout (they were compiled into the model),
so this module only decodes a JPEG/PNG/WebP/BMP/GIF with Pillow into uint8 pixels ``[1, H, W, C]``
(RGB, or gray for one-channel models). Text: a Hugging Face ``tokenizer.json`` shipped in the
bundle, run by the ``tokenizers`` library, padded and truncated as the manifest says.

gpuxc loads this same file (``gpuxc.bundle.runner_source.runner_module("preprocess")``) to turn
calibration images and text into samples, so calibration sees exactly what the bundle will.
NumPy and the standard library only at import time: Pillow and tokenizers are imported when used,
and are in the bundle's requirements only when its preprocessing needs them.

Every problem with what a caller sent is a :class:`PreprocessError` (a ``ValueError``): one line
naming the input and what is wrong, a 400 from the server and exit code 2 from the CLI.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

# Decoded images larger than this many pixels are refused before decoding (Pillow's own bomb
# check warns at 89 M pixels; a server should refuse well before memory runs out).
MAX_PIXELS = 64 * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class PreprocessError(ValueError):
    """An image or text a caller sent cannot be turned into model inputs (a client error)."""


# -- images -----------------------------------------------------------------------------------


def decode_image(data: bytes | str | os.PathLike[str], channels: str, label: str = "image") -> np.ndarray:
    """Encoded image bytes (or a file path) as uint8 pixels ``[1, H, W, C]``: RGB, or one channel
    when ``channels`` is ``"gray"`` (the model's channel order is the graph's business)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise PreprocessError(f"{label}: decoding images needs Pillow (pip install pillow)") from None
    if not isinstance(data, bytes | bytearray):
        path = Path(data)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PreprocessError(f"{label}: cannot read image file '{path.name}' ({exc.strerror})") from None
        label = f"{label} '{path.name}'"
    if not data:
        raise PreprocessError(f"{label}: the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise PreprocessError(f"{label}: {width}x{height} pixels is over the limit of {MAX_PIXELS} pixels")
            img.load()  # decodes now: a truncated file fails here, not later
            converted = img.convert("L" if channels == "gray" else "RGB")
    except PreprocessError:
        raise
    except UnidentifiedImageError:
        raise PreprocessError(f"{label}: not an image Pillow can decode (JPEG, PNG, WebP, BMP, GIF, TIFF)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise PreprocessError(f"{label}: the image cannot be decoded ({_first_line(exc)})") from None
    pixels = np.asarray(converted, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels[None]


def image_array(value: Any, channel_count: int, label: str = "image") -> np.ndarray:
    """Pixels a caller already decoded (``[H, W, C]`` or ``[N, H, W, C]`` uint8), checked."""
    array = np.asarray(value)
    if array.ndim == 2 and channel_count == 1:
        array = array[:, :, None]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise PreprocessError(f"{label}: pixels must be [H, W, C] or [N, H, W, C], got shape {list(array.shape)}")
    if array.shape[-1] != channel_count:
        raise PreprocessError(f"{label}: pixels have {array.shape[-1]} channels, the model takes {channel_count} "
                              f"(shape {list(array.shape)}, channels last)")  # fmt: skip
    if array.shape[1] < 1 or array.shape[2] < 1:
        raise PreprocessError(f"{label}: the image is empty (shape {list(array.shape)})")
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iu" or array.size and (array.min() < 0 or array.max() > 255):
            raise PreprocessError(f"{label}: pixels must be uint8 values 0..255, got {array.dtype}")
        array = array.astype(np.uint8)
    return array


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` in sorted name order (calibration data as a folder of photos)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# -- text -------------------------------------------------------------------------------------


class TextEncoder:
    """A ``tokenizer.json`` with the manifest's padding, truncation and model input names."""

    def __init__(self, spec: dict[str, Any], bundle_dir: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise PreprocessError("text input needs the 'tokenizers' package (pip install tokenizers)") from None
        self.spec = spec
        path = bundle_dir / spec["tokenizer"]
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise PreprocessError(f"{path.name}: cannot load the tokenizer ({_first_line(exc)})") from None
        # Padding and truncation are this bundle's, whatever the file carried. The tokenizer's own
        # truncation keeps the special tokens ([CLS] ... [SEP]) its post-processor adds.
        self.max_length = int(spec["max_length"])
        self.pad_id = self._pad_id()
        self.tokenizer.no_padding()
        if spec.get("truncation", True):
            self.tokenizer.enable_truncation(self.max_length)
        else:
            self.tokenizer.no_truncation()
        self.dtype = np.dtype(spec.get("dtype", "int64"))

    def encode(self, texts: str | list[str], label: str = "text") -> dict[str, np.ndarray]:
        """Model inputs for one text or a batch: ids, and attention mask / token type ids when the model has them."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch:
            raise PreprocessError(f"{label}: no text given")
        for i, text in enumerate(batch):
            where = label if isinstance(texts, str) else f"{label}[{i}]"
            if not isinstance(text, str):
                raise PreprocessError(f"{where}: text must be a string, got {type(text).__name__}")
            if not text.strip():
                raise PreprocessError(f"{where}: the text is empty")
        encodings = self.tokenizer.encode_batch(batch)
        rows = []
        for i, enc in enumerate(encodings):
            ids, types = list(enc.ids), list(enc.type_ids)
            if len(ids) > self.max_length:  # only without truncation
                where = label if isinstance(texts, str) else f"{label}[{i}]"
                raise PreprocessError(f"{where}: {len(ids)} tokens, over max_length {self.max_length} (this "
                                      "bundle does not truncate)")  # fmt: skip
            rows.append((ids, types))
        length = self.max_length if self.spec.get("padding") == "max_length" else max(len(r[0]) for r in rows)
        ids_out = np.full((len(rows), length), self.pad_id, dtype=self.dtype)
        mask_out = np.zeros((len(rows), length), dtype=self.dtype)
        types_out = np.zeros((len(rows), length), dtype=self.dtype)
        for r, (ids, types) in enumerate(rows):
            ids_out[r, : len(ids)] = ids
            mask_out[r, : len(ids)] = 1
            types_out[r, : len(types)] = types
        feeds = {self.spec["ids"]: ids_out}
        if self.spec.get("mask"):
            feeds[self.spec["mask"]] = mask_out
        if self.spec.get("type_ids"):
            feeds[self.spec["type_ids"]] = types_out
        return feeds

    def _pad_id(self) -> int:
        padding = self.tokenizer.padding  # the file's padding settings, when it has them
        if padding:
            return int(padding["pad_id"])
        for token in ("[PAD]", "<pad>", "<|padding|>", "<pad_token>"):
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
