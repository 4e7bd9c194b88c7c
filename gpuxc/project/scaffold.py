"""``gpuxc init MODEL.onnx``: a gpux.yml written from the model's real signature.

Every value comes from the model or from gpuxc's defaults and is written by ``yaml.safe_dump``,
which quotes any string that needs it: a hostile input name stays YAML data. The ``preprocessing``
block (issue 14) is the one place with comments, which safe_dump cannot write: they are fixed
text, appended as whole lines, and any block written commented out is safe_dump's output with
``# `` before every line, so nothing from the model can leave a comment.

- An image input (float, rank 4, a channel dim of 1 or 3; the only one) gets a block read off the
  model (input, resize to its fixed size) with ``normalize`` set to the usual choice, commented
  out: the normalisation is a guess that verification cannot catch (the reference runs the same
  preprocessing), so the user switches it on after checking it against training.
- Token inputs (int32/int64, rank 2, named like ``input_ids``) get the block commented out too: it
  needs the model's tokenizer.json, which gpuxc never downloads.
Either way the file compiles as written, taking tensors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gpuxc.errors import ConfigError
from gpuxc.project.config_preprocessing import IDS_RE, MASK_RE, TYPE_IDS_RE
from gpuxc.project.isolation import load_model
from gpuxc.project.preprocessing import image_layout

if TYPE_CHECKING:
    from gpuxc.project.model import ModelSignature, TensorInfo

__all__ = ["config_for", "preprocessing_block", "write_config"]

_IMAGE_INPUT_NAMES = ("image", "pixels", "image_uint8")

IMAGE_HELP = """\
# preprocessing (docs/preprocessing.md): gpuxc init found an image input. Uncomment the block and
# the bundle takes images: uint8 pixels [N, H, W, C] (RGB), resized and normalised inside the
# model, on every target. Check normalize against how the model was trained first: imagenet, 0-1,
# -1-1, none, or {mean: [...], std: [...], scale: 255}. Also: channels: bgr (models trained on BGR
# pixels), resize_mode: letterbox or center-crop (keep the aspect ratio).
"""
DYNAMIC_SIZE_HELP = "# The model takes any height and width; resize: [width, height] makes it one size.\n"
TEXT_HELP = """\
# preprocessing (docs/preprocessing.md): gpuxc init found token inputs. To send text instead of
# token ids, save the model's tokenizer.json (Hugging Face tokenizers format; gpuxc never downloads
# one) next to this file and uncomment the block.
"""


def config_for(model: Path, name: str | None = None, source: str | None = None) -> dict[str, Any]:
    """The gpux.yml data for ``model`` (without the preprocessing block: :func:`preprocessing_block`)."""
    return _config_data(load_model(model).signature, model, name, source)


def preprocessing_block(sig: ModelSignature) -> str:
    """The ``preprocessing`` block for ``sig`` as YAML text with comments, or "" when the model has
    no input that looks like an image or like token ids (or has both kinds)."""
    images = [t for t in sig.inputs if image_layout(t) is not None]
    tokens = [t for t in sig.inputs if _is_token_ids(t)]
    if len(images) == 1 and not tokens:
        return _image_block(images[0], sig)
    if len(tokens) == 1 and not images:
        return _text_block(tokens[0])
    return ""


def write_config(model: Path, out: Path | None = None, name: str | None = None,
                 force: bool = False) -> tuple[Path, str]:  # fmt: skip
    """Write the gpux.yml; returns its path and a one-line note on its preprocessing block ("" without one)."""
    out = out or model.parent / "gpux.yml"
    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists (use --force to overwrite)")
    source = os.path.relpath(model.resolve(), out.resolve().parent)
    sig = load_model(model).signature
    data = _config_data(
        sig, model, name, "./" + Path(source).as_posix() if not source.startswith("..") else Path(source).as_posix()
    )
    # safe_dump writes every string as YAML data, quoted where needed: no tag can sneak in.
    text = _dump(data)
    block = preprocessing_block(sig)
    if block:
        text += "\n" + block
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    note = ""
    if block.startswith(IMAGE_HELP):
        note = "preprocessing (commented out): check normalize, then uncomment it to send images"
    elif block:
        note = "preprocessing (commented out): save the model's tokenizer.json beside it to send text"
    return out, note


def _config_data(sig: ModelSignature, model: Path, name: str | None, source: str | None) -> dict[str, Any]:
    project = name or re.sub(r"[^A-Za-z0-9._-]+", "-", model.stem).strip("-._") or "model"
    if not project[0].isalnum():
        project = "m" + project

    def spec(t: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": t.dtype}
        if t.shape is not None:
            out["shape"] = [d if d is not None else -1 for d in t.shape]
        return out

    return {
        "name": project,
        "version": "1.0.0",
        "description": f"{model.name} ({sig.producer or 'unknown producer'})",
        "model": {"source": source or f"./{model.name}", "format": "onnx"},
        "inputs": {t.name: spec(t) for t in sig.inputs},
        "outputs": {t.name: spec(t) for t in sig.outputs},
        "runtime": {"gpu": {"backend": "auto"}, "batch_size": 1, "timeout": 30},
        "serving": {"host": "127.0.0.1", "port": 8080},
        "build": {"targets": ["cpu"]},
    }


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)


class _BlockDumper(yaml.SafeDumper):
    """safe_dump's representers, with mappings in block style and lists in flow style
    (``resize: [224, 224]`` under ``preprocessing:``, one key a line, as a person writes it)."""


_BlockDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)
# A string with a line break is written double-quoted on one line ("a\nb"): a block that goes out
# commented is then one "# " per line, and uncommenting it (deleting each "# ") gives the same data.
_LINE_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")
_BlockDumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style='"' if any(c in value for c in _LINE_BREAKS) else None)
)


def _dump_block(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=1 << 20)  # fmt: skip


def _image_block(tensor: TensorInfo, sig: ModelSignature) -> str:
    shape = tensor.shape
    assert shape is not None
    layout = image_layout(tensor)
    channels, height, width = (shape[1], shape[2], shape[3]) if layout == "nchw" else (shape[3], shape[1], shape[2])
    block: dict[str, Any] = {"input": tensor.name}
    others = {t.name for t in sig.inputs if t.name != tensor.name}
    image_input = next((n for n in _IMAGE_INPUT_NAMES if n not in others), None)
    if image_input is None:
        return ""  # every name gpuxc would give the uint8 input is taken: leave it to the user
    if image_input != "image":
        block["image_input"] = image_input
    fixed = isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0
    if fixed:
        block["resize"] = [width, height]  # GPUX's order
    # The usual choice for a colour model (ImageNet statistics); a gray one most often takes 0..1.
    block["normalize"] = "0-1" if channels == 1 else "imagenet"
    return IMAGE_HELP + ("" if fixed else DYNAMIC_SIZE_HELP) + _commented({"preprocessing": block})


def _text_block(tensor: TensorInfo) -> str:
    assert tensor.shape is not None
    length = tensor.shape[1]
    block: dict[str, Any] = {"tokenizer": "tokenizer.json"}
    # The model's fixed sequence length, or gpuxc's default for a dynamic one (the user may lower it).
    block["max_length"] = length if isinstance(length, int) and length > 0 else 512
    return TEXT_HELP + _commented({"preprocessing": block})


def _commented(data: dict[str, Any]) -> str:
    """safe_dump's YAML with ``# `` before every line: nothing from the model can end the comment."""
    return "".join(f"# {line}\n" for line in _dump_block(data).splitlines())


def _is_token_ids(tensor: TensorInfo) -> bool:
    return (tensor.dtype in ("int64", "int32") and tensor.shape is not None and len(tensor.shape) == 2
            and IDS_RE.search(tensor.name) is not None and not MASK_RE.search(tensor.name)
            and not TYPE_IDS_RE.search(tensor.name))  # fmt: skip
