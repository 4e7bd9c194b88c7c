"""gpux.yml's ``preprocessing`` block: GPUX's fields (resize, normalize, tokenizer, max_length) plus
what a real image or text model needs and GPUX left implicit (docs/preprocessing.md).

The schema only; gpuxc/project/preprocessing.py settles the block against the model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from gpuxc.project.config_errors import clip


class _Section(BaseModel):
    # As gpuxc/project/config.py's sections: strict types, unknown keys are errors.
    model_config = ConfigDict(extra="forbid", strict=True)


# Named normalisations (GPUX's names plus the usual ones): (pixel scale, mean, std) in RGB order,
# applied as ((pixel / scale) - mean) / std. docs/preprocessing.md has the table.
NORMALIZE_METHODS: dict[str, tuple[float, tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "0-1": (255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "-1-1": (127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    "none": (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
RESIZE_MODES = ("stretch", "letterbox", "center-crop")
CHANNEL_ORDERS = ("rgb", "bgr", "gray")
LAYOUTS = ("nchw", "nhwc")
PADDINGS = ("max_length", "longest")
# Model inputs a tokenizer feeds, told by name (reference inputs and text preprocessing alike).
MASK_RE = re.compile(r"mask", re.IGNORECASE)
TYPE_IDS_RE = re.compile(r"(token_type|segment)", re.IGNORECASE)
IDS_RE = re.compile(r"(input_ids|^ids$|token_ids|^input$|tokens)", re.IGNORECASE)
# A bundle input name the runner routes and the server exposes: a plain identifier.
INPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")


class NormalizeSpec(_Section):
    """``normalize: {mean: [...], std: [...]}``: per-channel, in the model's channel order, on pixel / scale."""

    mean: list[float]
    std: list[float]
    scale: Annotated[float, Field(gt=0)] = 255.0

    @model_validator(mode="after")
    def _lengths(self) -> NormalizeSpec:
        if len(self.mean) not in (1, 3) or len(self.std) not in (1, 3):
            raise ValueError("normalize.mean and normalize.std take 1 or 3 values (one per channel)")
        if any(v == 0 for v in self.std):
            raise ValueError("normalize.std must not contain 0")
        return self


_IMAGE_FIELDS = {"resize", "normalize", "image_input", "channels", "layout", "resize_mode", "pad_value"}
_TEXT_FIELDS = {"tokenizer", "max_length", "padding", "truncation", "ids_input", "mask_input", "type_ids_input"}


class PreprocessingSection(_Section):
    """GPUX's preprocessing block, acted on: images become ONNX operators prepended to the model
    (gpuxc/project/preprocess_graph.py); text goes through a real tokenizer in the runner.

    GPUX's fields are ``resize``, ``normalize``, ``tokenizer`` and ``max_length``; the rest are
    gpuxc's, for what a real model needs and GPUX left implicit (docs/preprocessing.md).
    Which fields apply is settled against the model by gpuxc/project/preprocessing.py.
    """

    # GPUX's fields
    tokenizer: str | None = None  # a tokenizer.json in the project, or a folder holding one
    max_length: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    resize: list[Annotated[int, Field(ge=1, le=16384)]] | None = None  # [width, height], GPUX's order
    normalize: Literal["imagenet", "0-1", "-1-1", "none"] | NormalizeSpec | None = None
    # gpuxc's: which model input the block feeds (default: the only one that fits)
    input: str | None = None
    # images
    image_input: str = "image"  # the bundle's new uint8 input, [N, H, W, C] pixels
    channels: Literal[CHANNEL_ORDERS] | None = None  # type: ignore[valid-type]  # order the model expects
    layout: Literal[LAYOUTS] | None = None  # type: ignore[valid-type]  # default: read off the model input's shape
    resize_mode: Literal[RESIZE_MODES] = "stretch"  # type: ignore[valid-type]
    pad_value: Annotated[int, Field(ge=0, le=255)] = 0  # letterbox fill, as a pixel value
    # text
    padding: Literal[PADDINGS] = "max_length"  # type: ignore[valid-type]
    truncation: bool = True
    ids_input: str | None = None  # default: the model input named like input_ids
    mask_input: str | None = None  # default: attention_mask, when the model has it
    type_ids_input: str | None = None  # default: token_type_ids, when the model has it

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\x00" in value):
            raise ValueError("tokenizer must be a path to a tokenizer.json (non-empty, no NUL character)")
        return value

    @field_validator("resize")
    @classmethod
    def _resize(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if value is not None and len(value) != 2:
            raise ValueError(f"resize takes [width, height], got {len(value)} values")
        return _not_text(value, info)

    @field_validator("normalize", mode="wrap")
    @classmethod
    def _normalize(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        # A mapping is a NormalizeSpec, validated as one so that its errors point inside it (as a
        # plain union member, pydantic reported the mapping as "not 'imagenet', '0-1', ...").
        value = NormalizeSpec.model_validate(value) if isinstance(value, dict) else handler(value)
        return _not_text(value, info)

    @field_validator("image_input")
    @classmethod
    def _image_input(cls, value: str, info: ValidationInfo) -> str:
        if not INPUT_NAME_RE.match(value):
            raise ValueError(f"'{clip(value)}' is not an input name: use letters, digits, '_', '.' or '-'")
        return _of_its_kind(value, info)

    # Nothing silently ignored: a field of the other kind (or of no kind) is an error at that field.
    @field_validator("max_length", "input", *sorted(_IMAGE_FIELDS - {"resize", "normalize", "image_input"}),
                     *sorted(_TEXT_FIELDS - {"tokenizer", "max_length"}))  # fmt: skip
    @classmethod
    def _kind_fields(cls, value: Any, info: ValidationInfo) -> Any:
        return _of_its_kind(value, info)

    @property
    def kind(self) -> Literal["image", "text"] | None:
        """What the block preprocesses, or None for an empty block."""
        if self.tokenizer is not None:
            return "text"
        if self.resize is not None or self.normalize is not None:
            return "image"
        return None


def _not_text(value: Any, info: ValidationInfo) -> Any:
    if value is not None and info.data.get("tokenizer") is not None:
        raise ValueError("preprocessing is either for an image (resize, normalize) or for text (tokenizer), not both")
    return value


def _of_its_kind(value: Any, info: ValidationInfo) -> Any:
    """``value`` of field ``info.field_name``, refused when the block is not of that field's kind.

    Field validators run only on the fields the file sets, in declaration order: tokenizer, then
    resize and normalize are settled in ``info.data`` before the fields checked here (max_length
    only follows tokenizer). One missing there failed its own validation, which is reported instead.
    """
    field = info.field_name
    data = info.data
    deciding = ("tokenizer",) if field == "max_length" else ("tokenizer", "resize", "normalize")
    if value is None or any(k not in data for k in deciding):
        return value
    text = data["tokenizer"] is not None
    image = field != "max_length" and (data["resize"] is not None or data["normalize"] is not None)
    if field == "max_length" and not text:
        raise ValueError("only for text: set preprocessing.tokenizer (max_length bounds its token count)")
    if field == "input" and not (image or text):
        raise ValueError("names the input the block feeds, but the block has no resize/normalize (an image) or "
                         "tokenizer (text)")  # fmt: skip
    if field in _IMAGE_FIELDS and not image:
        raise ValueError("only for images: the block needs resize or normalize")
    if field in _TEXT_FIELDS - {"max_length"} and not text:
        raise ValueError("only for text: the block needs tokenizer")
    return value
