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

import base64
import binascii
import io
import os
import re
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


def resize_pixels(pixels: np.ndarray, size: tuple[int, int], mode: str = "stretch", pad_value: int = 0) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` brought to ``size`` (width, height) with Pillow's bilinear filter, for
    targets whose image input has a fixed height and width (static shapes). ``mode`` as gpux.yml's
    ``resize_mode``, with the compiled graph's geometry (gpuxc/project/preprocess_graph.py):
    ``letterbox`` scales to fit and centres on ``pad_value``, ``center-crop`` scales to cover and
    keeps the centre, so the graph's own resize to the same size changes nothing."""
    try:
        from PIL import Image
    except ImportError:
        raise PreprocessError("resizing images needs Pillow (pip install pillow)") from None
    width, height = size
    rows = []
    for image in pixels:
        gray = image.shape[-1] == 1
        img = Image.fromarray(np.ascontiguousarray(image[:, :, 0] if gray else image), "L" if gray else "RGB")
        scaled = (width, height)
        if mode in ("letterbox", "center-crop"):
            ratio = np.array([height, width], np.float32) / np.array(image.shape[:2], np.float32)
            scale = ratio.min() if mode == "letterbox" else ratio.max()
            hw = np.round(np.array(image.shape[:2], np.float32) * scale).astype(np.int64)  # half to even, as Round
            hw = np.minimum(hw, [height, width]) if mode == "letterbox" else np.maximum(hw, [height, width])
            scaled = (max(int(hw[1]), 1), max(int(hw[0]), 1))
        out = np.asarray(img.resize(scaled, Image.Resampling.BILINEAR), dtype=np.uint8)
        out = out[:, :, None] if gray else out
        if mode == "letterbox":
            canvas = np.full((height, width, out.shape[-1]), pad_value, np.uint8)
            top, left = (height - out.shape[0]) // 2, (width - out.shape[1]) // 2
            canvas[top:top + out.shape[0], left:left + out.shape[1]] = out
            out = canvas
        elif mode == "center-crop":
            top, left = (out.shape[0] - height) // 2, (out.shape[1] - width) // 2
            out = out[top:top + height, left:left + width]
        rows.append(out)
    return np.stack(rows)


_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def decode_base64(text: str, label: str = "image") -> bytes:
    """An image sent as base64 text (JSON, v2 BYTES), optionally as a ``data:image/...;base64,`` URL."""
    body = "".join(_DATA_URL.sub("", text.strip(), count=1).split())
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise PreprocessError(f"{label}: a string must be base64-encoded image bytes (or a data: URL)") from None
    if not data:
        raise PreprocessError(f"{label}: the image is empty (0 bytes)")
    return data


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
        # A static-shape artifact (CoreML, a TensorRT engine) fixes the sequence length: pad to it.
        self.fixed_length: int | None = None

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
        if self.fixed_length is not None:
            if max(len(r[0]) for r in rows) > self.fixed_length:
                raise PreprocessError(f"{label}: over {self.fixed_length} tokens, the length this bundle's model is "
                                      "fixed to")  # fmt: skip
            length = self.fixed_length
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


# -- requests ---------------------------------------------------------------------------------


class Preprocessor:
    """The manifest's ``preprocessing`` applied to what a caller sent, before the input checks.

    Images: the image input's value may be encoded bytes, a file path (when ``paths``), a list of
    either (a batch), or decoded uint8 pixels ``[H, W, C]`` / ``[N, H, W, C]`` (nested lists too);
    it becomes uint8 ``[N, H, W, C]``, resized first (Pillow bilinear) when the bundle's image input
    has a fixed height and width. Text: ``{"text": str | list[str]}`` becomes the token inputs.
    Every other input passes unchanged, so the raw tensors keep working.
    """

    def __init__(self, record: dict[str, Any], inputs: list[dict[str, Any]], bundle_dir: Path) -> None:
        self.record = record
        self.kind: str = record["kind"]
        self.key: str = record["input"]
        self.encoder = TextEncoder(record, bundle_dir) if self.kind == "text" else None
        self.token_inputs = [record[k] for k in ("ids", "mask", "type_ids") if record.get(k)]
        self.channel_count = int(record.get("channel_count") or 3)
        self.resize_mode = str(record.get("resize_mode") or "stretch")
        self.pad_value = int(record.get("pad_value") or 0)
        self.gray = record.get("channels") == "gray"
        self.fixed_size: tuple[int, int] | None = None  # (width, height) the runner resizes to
        spec = next((s for s in inputs if s["name"] == self.key), None)
        shape = spec.get("shape") if spec else None
        ids_spec = next((s for s in inputs if s["name"] == record.get("ids")), None)
        ids_shape = ids_spec.get("shape") if ids_spec else None
        if self.encoder is not None and ids_shape and len(ids_shape) == 2 and isinstance(ids_shape[1], int):
            self.encoder.fixed_length = ids_shape[1] if ids_shape[1] > 0 else None
        if self.kind == "image" and shape and len(shape) == 4:
            height, width = shape[1], shape[2]
            if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
                self.fixed_size = (width, height)

    def describe(self) -> dict[str, Any]:
        """The manifest's record and what the runner itself does (for ``/info``)."""
        runner: dict[str, Any]
        if self.kind == "image":
            runner = {"accepts": ["encoded image (JPEG, PNG, WebP, BMP, GIF, TIFF)", "uint8 pixels [N, H, W, C]"],
                      "resize": None if self.fixed_size is None else
                      {"size": list(self.fixed_size), "filter": "bilinear", "mode": self.resize_mode,
                       "by": "runner (Pillow)", "why": "the image input has a fixed height and width on this target"}}
        else:
            runner = {"accepts": ["text", "list of texts"], "tokenizer": self.record["tokenizer"]}
        return {**self.record, "runner": runner}

    def apply(self, data: dict[str, Any], paths: bool = True) -> dict[str, Any]:
        """``data`` with the image input decoded or the text tokenised; unchanged without them."""
        if self.key not in data:
            return data
        out = dict(data)
        value = out.pop(self.key)
        if self.encoder is not None:
            both = [name for name in self.token_inputs if name in out]
            if both:
                raise PreprocessError(f"send either '{self.key}' or the token inputs ({', '.join(both)}), not both")
            out.update(self.encoder.encode(_texts(value, self.key), self.key))
        else:
            out[self.key] = self.image(value, paths)
        return out

    def image(self, value: Any, paths: bool = True) -> np.ndarray:
        """The image input's value as uint8 ``[N, H, W, C]`` at the size the bundle takes."""
        if type(value) is np.ndarray and value.dtype == np.uint8 and value.ndim == 4 and (
                value.shape[-1] == self.channel_count and self._sized(value)):  # fmt: skip
            return value  # already what the model takes: the hot path and re-runs of prepared feeds
        encoded = _encoded_items(value)
        if encoded is None:
            pixels = image_array(value, self.channel_count, self.key)
            return pixels if self._sized(pixels) else self._fit(pixels)
        images = []
        for i, item in enumerate(encoded):
            where = self.key if len(encoded) == 1 else f"{self.key}[{i}]"
            if not isinstance(item, bytes | bytearray | memoryview):
                if not paths:
                    raise PreprocessError(f"{where}: send the image's bytes (base64 in JSON); file paths are not "
                                          "read here")  # fmt: skip
                if isinstance(item, str) and not item:
                    raise PreprocessError(f"{where}: empty file name")
            pixels = decode_image(bytes(item) if isinstance(item, memoryview) else item,
                                  "gray" if self.gray else "rgb", where)  # fmt: skip
            images.append(pixels if self._sized(pixels) else self._fit(pixels))
        if not images:
            raise PreprocessError(f"{self.key}: no image given")
        sizes = {img.shape[1:3] for img in images}
        if len(sizes) > 1:
            listed = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
            raise PreprocessError(f"{self.key}: images in one batch must have the same size (got {listed}); "
                                  "send them in separate requests")  # fmt: skip
        return np.concatenate(images) if len(images) > 1 else images[0]

    def _fit(self, pixels: np.ndarray) -> np.ndarray:
        assert self.fixed_size is not None
        return resize_pixels(pixels, self.fixed_size, self.resize_mode, self.pad_value)

    def _sized(self, pixels: np.ndarray) -> bool:
        return self.fixed_size is None or (pixels.shape[2], pixels.shape[1]) == self.fixed_size


def _encoded_items(value: Any) -> list[Any] | None:
    """The encoded images (bytes, paths) in ``value``, or None when it holds pixels."""
    if isinstance(value, bytes | bytearray | memoryview | str | os.PathLike):
        return [value]
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        value = value.reshape(-1).tolist()
    if isinstance(value, list | tuple) and value and all(
            isinstance(v, bytes | bytearray | memoryview | str | os.PathLike) for v in value):  # fmt: skip
        return list(value)
    return None


def _texts(value: Any, label: str) -> str | list[str]:
    """``{"text": ...}``'s value as the encoder takes it: a string, or a list of strings (v2 BYTES
    arrive as an object array, elements as bytes that must be UTF-8)."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist() if value.ndim else value.item()
    items = [value] if isinstance(value, str | bytes) else value
    if not isinstance(items, list | tuple):
        raise PreprocessError(f"{label}: text must be a string or a list of strings, got {type(value).__name__}")
    texts: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise PreprocessError(f"{label}[{i}]: text is not valid UTF-8") from None
        texts.append(item)
    return texts[0] if isinstance(value, str | bytes) else texts


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
