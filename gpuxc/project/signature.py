"""Checking what gpux.yml declares against what the model really is.

Declared inputs/outputs are matched by name; dtype, rank and fixed dims must
agree. A declared fixed value may pin a symbolic model dim (it then sets the
reference shape); a declared symbolic/-1/null dim matches anything.
"""

from __future__ import annotations

from typing import Any

from gpuxc.bundle.manifest import TensorSpecOut
from gpuxc.errors import SignatureMismatch, did_you_mean
from gpuxc.project.config import GpuxConfig, TensorSpec
from gpuxc.project.model import ModelSignature, TensorInfo


def check_signature(config: GpuxConfig, signature: ModelSignature) -> None:
    model_file = config.model.source
    for section, tensors in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        declared: list[TensorSpec] = getattr(config, section)
        by_name = {t.name: t for t in tensors}
        for index, spec in enumerate(declared):
            tensor = by_name.get(spec.name)
            if tensor is None:
                raise SignatureMismatch(
                    f"{config.where(section, index, 'name')}: {section[:-1]} '{spec.name}' is not an {section[:-1]} of "
                    f"{model_file}{did_you_mean(spec.name, by_name)}; "
                    f"the model's {section}: {', '.join(by_name) or 'none'}"
                )
            _check_one(config, section, index, spec, tensor)
        if section == "inputs" and declared:
            undeclared = [t.name for t in tensors if t.name not in {s.name for s in declared}]
            if undeclared:
                raise SignatureMismatch(
                    f"{config.where('inputs')}: model input '{undeclared[0]}' is not declared in inputs "
                    "(declare every input, or none to take them from the model)"
                )


def _check_one(config: GpuxConfig, section: str, index: int, spec: TensorSpec, tensor: TensorInfo) -> None:
    what = f"{section[:-1]} '{spec.name}'"
    if spec.type is not None and spec.type != tensor.dtype:
        raise SignatureMismatch(
            f"{config.where(section, index, 'type')}: {what} is declared {spec.type}, but the model's is {tensor.dtype}"
        )
    if spec.shape is not None and tensor.shape is not None:
        if len(spec.shape) != len(tensor.shape):
            raise SignatureMismatch(
                f"{config.where(section, index, 'shape')}: {what} is declared with rank {len(spec.shape)} "
                f"{_fmt(spec.shape)}, but the model's has rank {len(tensor.shape)} {_fmt(tensor.shape)}"
            )
        for axis, (want, have) in enumerate(zip(spec.shape, tensor.shape, strict=False)):
            if isinstance(want, int) and want >= 0 and isinstance(have, int) and want != have:
                raise SignatureMismatch(
                    f"{config.where(section, index, 'shape', axis)}: {what} dim {axis} is declared {want}, "
                    f"but the model fixes it to {have} (model shape {_fmt(tensor.shape)})"
                )
    if spec.labels is not None and section == "outputs" and tensor.shape:
        last = tensor.shape[-1]
        if isinstance(last, int) and last != len(spec.labels):
            raise SignatureMismatch(
                f"{config.where(section, index, 'labels')}: {what} has {len(spec.labels)} labels, "
                f"but its last dim is {last}"
            )
    if spec.max_length is not None and section == "inputs" and tensor.shape:
        last = tensor.shape[-1]
        if isinstance(last, int) and last > spec.max_length:
            raise SignatureMismatch(
                f"{config.where(section, index, 'max_length')}: {what} max_length {spec.max_length} is below the "
                f"model's fixed length {last}"
            )


def bundle_io(config: GpuxConfig, tensors: list[TensorInfo], section: str) -> list[TensorSpecOut]:
    """The runner's view of inputs/outputs: the artifact's shapes plus gpux.yml's descriptions."""
    declared = config.declared_inputs() if section == "inputs" else {s.name: s for s in config.outputs}
    out = []
    for tensor in tensors:
        spec = declared.get(tensor.name)
        out.append(
            TensorSpecOut(
                name=tensor.name,
                dtype=tensor.dtype,
                shape=tensor.shape,
                description=spec.description if spec else None,
                labels=spec.labels if spec else None,
                top_k=spec.top_k if spec else None,
                max_length=spec.max_length if spec else None,
            )
        )
    return out


def _fmt(shape: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
