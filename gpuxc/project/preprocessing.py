"""gpux.yml's ``preprocessing`` block settled against the model: which input it feeds, and how.

The config (gpuxc/project/config.py) says what the user wrote; this module reads the model's
signature and decides everything the block left implicit, with a ``file:line`` error for every
contradiction. The result is recorded in the manifest (``preprocessing``), where the runner reads it:

- :class:`ImagePreprocessing`: cast, resize, channel order, normalisation and layout, compiled into
  the graph as ONNX operators (gpuxc/project/preprocess_graph.py), so every target does them on
  its device. The bundle's image input is then uint8 pixels ``[N, H, W, C]`` of any size.
- :class:`TextPreprocessing`: a Hugging Face ``tokenizer.json`` copied into the bundle; the runner
  tokenises with the ``tokenizers`` library and feeds ids, attention mask and token type ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from gpuxc.bundle import layout
from gpuxc.errors import ConfigError, SignatureMismatch, did_you_mean, first_line
from gpuxc.project.config import GpuxConfig
from gpuxc.project.config_errors import clip
from gpuxc.project.config_preprocessing import IDS_RE, MASK_RE, NORMALIZE_METHODS, TYPE_IDS_RE, NormalizeSpec

if TYPE_CHECKING:
    from gpuxc.project.model import ModelSignature, TensorInfo

__all__ = ["TOKENIZER_FILE", "ImagePreprocessing", "TextPreprocessing", "resolve_preprocessing", "tokenizer_path"]

TOKENIZER_FILE = "tokenizer.json"
TEXT_INPUT = "text"  # the runner's key for text: {"text": "..."}
_FLOATS = ("float32", "float16", "float64", "bfloat16")
_INTS = ("int64", "int32")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImagePreprocessing(_Record):
    """What the graph does to the pixels, in order; the manifest's ``preprocessing`` for images."""

    kind: Literal["image"] = "image"
    input: str  # the bundle's uint8 input, [N, H, W, C]
    feeds: str  # the model input it replaced (no longer a bundle input)
    channels: Literal["rgb", "bgr", "gray"]  # order the model expects; pixels arrive RGB (or gray)
    channel_count: int  # C
    layout: Literal["nchw", "nhwc"]  # of the model input
    size: list[int] | None  # [width, height] the graph resizes to; None: the model takes any size
    resize_mode: Literal["stretch", "letterbox", "center-crop"]
    pad_value: int
    scale: float  # pixel / scale, then (x - mean) / std per channel (model channel order)
    mean: list[float]
    std: list[float]
    dtype: str  # the model input's float type

    def summary(self) -> str:
        """One line for the build log: what the graph now does to the pixels."""
        size = f"resize {self.resize_mode} to {self.size[0]}x{self.size[1]}, " if self.size else ""
        return (f"uint8 '{self.input}' [N, H, W, {self.channel_count}] -> {size}{self.channels}, "
                f"(x/{self.scale:g} - mean)/std, {self.layout} -> '{self.feeds}' (in the graph)")  # fmt: skip


class TextPreprocessing(_Record):
    """How the runner turns text into the model's token inputs; the manifest's ``preprocessing`` for text."""

    kind: Literal["text"] = "text"
    input: str = TEXT_INPUT
    tokenizer: str  # path inside the bundle
    max_length: int
    padding: Literal["max_length", "longest"]
    truncation: bool
    ids: str
    mask: str | None
    type_ids: str | None
    dtype: str  # of the id inputs


Preprocessing = ImagePreprocessing | TextPreprocessing


def resolve_preprocessing(config: GpuxConfig, signature: ModelSignature) -> Preprocessing | None:
    """The block settled against ``signature`` (the source model's), or None when it is empty."""
    kind = config.preprocessing.kind
    if kind == "image":
        return _image(config, signature)
    if kind == "text":
        return _text(config, signature)
    return None


def tokenizer_path(config: GpuxConfig) -> Path:
    """The project's tokenizer.json named by ``preprocessing.tokenizer`` (a file, or a folder holding
    one). gpuxc never downloads one: a hub name is an error saying where to put the file."""
    given = config.preprocessing.tokenizer
    assert given is not None
    where = config.where("preprocessing", "tokenizer")
    path = (config.project_dir / given).resolve()
    try:
        if path.is_dir():
            path = path / TOKENIZER_FILE
        found = path.is_file()
    except OSError as exc:
        reason = exc.strerror
        raise ConfigError(f"{where}: preprocessing.tokenizer '{clip(given)}' cannot be opened ({reason})") from None
    if not found:
        raise ConfigError(
            f"{where}: preprocessing.tokenizer '{clip(given)}' is not a file in the project: gpuxc never downloads; "
            f"save the model's {TOKENIZER_FILE} (Hugging Face tokenizers format) next to gpux.yml and set "
            f"tokenizer: {TOKENIZER_FILE}"
        )
    return path


def load_tokenizer(path: Path, where: str) -> object:
    """Parse ``path`` with the ``tokenizers`` library: a file that does not parse is a ConfigError."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError(f"{where}: text preprocessing needs the 'tokenizers' package",
                          hint="pip install 'gpuxc[text]'") from None  # fmt: skip
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        reason = first_line(exc, 200)
        raise ConfigError(f"{where}: '{path.name}' is not a tokenizers tokenizer.json ({reason})") from None


def text_encoder(record: TextPreprocessing, tokenizer: Path) -> Any:
    """The runner's own ``TextEncoder`` on the project's ``tokenizer`` file: compile-time text
    (reference sentences, calibration lines) is tokenised exactly as the bundle will tokenise it.
    Raises the runner's ``PreprocessError`` (a ValueError) when the file cannot be loaded."""
    from gpuxc.bundle.runner_source import runner_module

    tokenizer = tokenizer.resolve()  # absolute: wins over the folder the runner joins it onto
    return runner_module("preprocess").TextEncoder({**record.model_dump(), "tokenizer": str(tokenizer)},
                                                   tokenizer.parent)  # fmt: skip


# -- images -----------------------------------------------------------------------------------


def _image(config: GpuxConfig, signature: ModelSignature) -> ImagePreprocessing:
    pre = config.preprocessing
    tensor = _fed_input(config, signature, lambda t: image_layout(t) is not None,
                        "an image (float, rank 4, 1 or 3 channels)")  # fmt: skip
    where = config.where("preprocessing", "input") if pre.input else config.where("preprocessing")
    what = f"model input '{tensor.name}'"
    if tensor.dtype not in _FLOATS:
        raise SignatureMismatch(f"{where}: image preprocessing feeds {what}, which is {tensor.dtype}: it needs a float "
                                "input (pixels are normalised to floats)")  # fmt: skip
    shape = tensor.shape
    if shape is None or len(shape) != 4:
        raise SignatureMismatch(f"{where}: image preprocessing feeds {what} of shape {_fmt(shape)}: it needs rank 4 "
                                "(NCHW or NHWC)")  # fmt: skip
    layout = pre.layout or _layout(shape)
    if layout is None:
        raise ConfigError(f"{where}: cannot tell the layout of {what} {_fmt(shape)} (no channel dim of 1 or 3): set "
                          "preprocessing.layout: nchw or nhwc")  # fmt: skip
    c_dim, h_dim, w_dim = (shape[1], shape[2], shape[3]) if layout == "nchw" else (shape[3], shape[1], shape[2])
    channels: Literal["rgb", "bgr", "gray"] = pre.channels or ("gray" if c_dim == 1 else "rgb")
    count = 1 if channels == "gray" else 3
    if isinstance(c_dim, int) and c_dim != count:
        raise SignatureMismatch(
            f"{config.where('preprocessing', 'channels') if pre.channels else where}: {what} has {c_dim} channels "
            f"({layout} {_fmt(shape)}), but preprocessing gives {count} ({channels})"
        )
    size = list(pre.resize) if pre.resize else None
    fixed = [h_dim, w_dim]
    if size is not None:
        for name, want, have in (("height", size[1], h_dim), ("width", size[0], w_dim)):
            if isinstance(have, int) and have > 0 and have != want:
                raise SignatureMismatch(
                    f"{config.where('preprocessing', 'resize')}: resize [{size[0]}, {size[1]}] (width, height) "
                    f"contradicts {what}'s fixed {name} {have} ({layout} {_fmt(shape)})"
                )
    elif all(isinstance(d, int) and d > 0 for d in fixed):
        size = [int(w_dim), int(h_dim)]  # type: ignore[arg-type]
    if size is None and pre.resize_mode != "stretch":
        raise ConfigError(f"{config.where('preprocessing', 'resize_mode')}: resize_mode {pre.resize_mode} needs a "
                          f"size: set preprocessing.resize ({what} has no fixed height and width)")  # fmt: skip
    scale, mean, std = _normalization(config, channels, count)
    others = {t.name for t in signature.inputs if t.name != tensor.name}
    if pre.image_input in others:
        raise ConfigError(f"{config.where('preprocessing', 'image_input')}: image_input '{pre.image_input}' is "
                          "already another model input: choose another name")  # fmt: skip
    return ImagePreprocessing(input=pre.image_input, feeds=tensor.name, channels=channels, channel_count=count,
                              layout=layout, size=size, resize_mode=pre.resize_mode, pad_value=pre.pad_value,
                              scale=scale, mean=mean, std=std, dtype=tensor.dtype)  # fmt: skip


def _normalization(config: GpuxConfig, channels: str, count: int) -> tuple[float, list[float], list[float]]:
    norm = config.preprocessing.normalize
    if isinstance(norm, NormalizeSpec):
        if count == 1 and (len(norm.mean) == 3 or len(norm.std) == 3):
            raise ConfigError(f"{config.where('preprocessing', 'normalize')}: normalize gives 3 values per channel, "
                              "but the model input has 1 channel (gray)")  # fmt: skip
        mean = norm.mean * count if len(norm.mean) == 1 else list(norm.mean)
        std = norm.std * count if len(norm.std) == 1 else list(norm.std)
        return norm.scale, mean, std
    scale, rgb_mean, rgb_std = NORMALIZE_METHODS[norm or "0-1"]
    if channels == "gray":  # one channel: the mean of the RGB constants (ImageNet's gray convention)
        return scale, [sum(rgb_mean) / 3], [sum(rgb_std) / 3]
    order = [2, 1, 0] if channels == "bgr" else [0, 1, 2]
    return scale, [rgb_mean[i] for i in order], [rgb_std[i] for i in order]


def image_layout(tensor: TensorInfo) -> Literal["nchw", "nhwc"] | None:
    """``nchw``/``nhwc`` for an input that looks like an image (float, rank 4, a channel dim of 1 or 3), else None."""
    if tensor.dtype not in _FLOATS or tensor.shape is None or len(tensor.shape) != 4:
        return None
    return _layout(tensor.shape)


def _layout(shape: list[int | str | None]) -> Literal["nchw", "nhwc"] | None:
    if shape[1] in (1, 3):
        return "nchw"
    if shape[3] in (1, 3):
        return "nhwc"
    return None


# -- text -------------------------------------------------------------------------------------


def _text(config: GpuxConfig, signature: ModelSignature) -> TextPreprocessing:
    pre = config.preprocessing
    path = tokenizer_path(config)
    load_tokenizer(path, config.where("preprocessing", "tokenizer"))
    ids = _named_input(config, signature, "ids_input", pre.ids_input or pre.input, IDS_RE, required=True)
    assert ids is not None
    mask = _named_input(config, signature, "mask_input", pre.mask_input, MASK_RE, required=False)
    type_ids = _named_input(config, signature, "type_ids_input", pre.type_ids_input, TYPE_IDS_RE, required=False)
    length: int | None = None
    # An input the file named is wrong at that field; one found by its name, at the block.
    fields = {"ids_input": ids, "mask_input": mask, "type_ids_input": type_ids}
    for field, tensor in ((f, t) for f, t in fields.items() if t is not None):
        key = field if getattr(pre, field) is not None else "input" if field == "ids_input" and pre.input else None
        where = config.where("preprocessing", key) if key else config.where("preprocessing")
        if tensor.dtype not in _INTS:
            raise SignatureMismatch(f"{where}: text preprocessing feeds model input '{tensor.name}', which is "
                                    f"{tensor.dtype}: token inputs must be int64 or int32")  # fmt: skip
        if tensor.shape is None or len(tensor.shape) != 2:
            raise SignatureMismatch(f"{where}: text preprocessing feeds model input '{tensor.name}' of shape "
                                    f"{_fmt(tensor.shape)}: token inputs are [batch, sequence]")  # fmt: skip
        last = tensor.shape[1]
        if isinstance(last, int) and last > 0:
            length = last
    max_length = pre.max_length or length or 512
    if length is not None and max_length != length:
        raise SignatureMismatch(f"{config.where('preprocessing', 'max_length')}: max_length {max_length} "
                                f"contradicts the model's fixed sequence length {length}")  # fmt: skip
    # Unset: pad to the fixed length, or (a dynamic sequence) only to the longest text, no work on padding.
    padding: Literal["max_length", "longest"] = pre.padding
    if "padding" not in pre.model_fields_set:
        padding = "max_length" if length is not None else "longest"
    if length is not None and padding == "longest":
        raise ConfigError(f"{config.where('preprocessing', 'padding')}: padding: longest, but the model fixes the "
                          f"sequence length to {length}: use padding: max_length")  # fmt: skip
    return TextPreprocessing(tokenizer=layout.TOKENIZER, max_length=max_length, padding=padding,
                             truncation=pre.truncation, ids=ids.name, mask=mask.name if mask else None,
                             type_ids=type_ids.name if type_ids else None, dtype=ids.dtype)  # fmt: skip


def _named_input(config: GpuxConfig, signature: ModelSignature, field: str, given: str | None, pattern: object,
                 required: bool) -> TensorInfo | None:  # fmt: skip
    names = [t.name for t in signature.inputs]
    if given is not None:
        return _input_named(config, signature, field if getattr(config.preprocessing, field) is not None else "input",
                            given)  # fmt: skip
    found = [t for t in signature.inputs if pattern.search(t.name) and t.dtype in _INTS]  # type: ignore[attr-defined]
    if field == "ids_input":  # the ids input is the one that is neither mask nor type ids
        found = [t for t in found if not MASK_RE.search(t.name) and not TYPE_IDS_RE.search(t.name)]
    if len(found) == 1:
        return found[0]
    if not required:
        return None
    ints = [t.name for t in signature.inputs if t.dtype in _INTS]
    if len(ints) == 1 and not found:
        return signature.input(ints[0])
    raise ConfigError(f"{config.where('preprocessing')}: cannot tell which model input takes the token ids "
                      f"(inputs: {', '.join(names)}): set preprocessing.ids_input")  # fmt: skip


# -- shared -----------------------------------------------------------------------------------


def _fed_input(config: GpuxConfig, signature: ModelSignature, fits: object, what: str) -> TensorInfo:
    given = config.preprocessing.input
    if given is not None:
        return _input_named(config, signature, "input", given)
    found = [t for t in signature.inputs if fits(t)]  # type: ignore[operator]
    if len(found) == 1:
        return found[0]
    if not found and len(signature.inputs) == 1:
        return signature.inputs[0]  # the checks that follow say what is wrong with it
    listed = ", ".join(f"{t.name} {t.dtype} {_fmt(t.shape)}" for t in signature.inputs)
    which = "several inputs look like" if found else "no input looks like"
    raise ConfigError(f"{config.where('preprocessing')}: {which} {what}: name one with preprocessing.input "
                      f"(inputs: {listed})")  # fmt: skip


def _input_named(config: GpuxConfig, signature: ModelSignature, key: str, given: str) -> TensorInfo:
    tensor = signature.input(given)
    if tensor is None:
        names = [t.name for t in signature.inputs]
        raise SignatureMismatch(f"{config.where('preprocessing', key)}: '{given}' is not a model input"
                                f"{did_you_mean(given, names)}; the model's inputs: {', '.join(names)}")  # fmt: skip
    return tensor


def _fmt(shape: list[int | str | None] | None) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
