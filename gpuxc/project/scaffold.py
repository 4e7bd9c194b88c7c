"""``gpuxc init MODEL.onnx``: a gpux.yml written from the model's real signature."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from gpuxc.errors import ConfigError
from gpuxc.project.isolation import load_model


def config_for(model: Path, name: str | None = None, source: str | None = None) -> dict[str, Any]:
    sig = load_model(model).signature
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


def write_config(model: Path, out: Path | None = None, name: str | None = None, force: bool = False) -> Path:
    out = out or model.parent / "gpux.yml"
    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists (use --force to overwrite)")
    source = os.path.relpath(model.resolve(), out.resolve().parent)
    data = config_for(
        model, name, "./" + Path(source).as_posix() if not source.startswith("..") else Path(source).as_posix()
    )
    # safe_dump writes every string as YAML data, quoted where needed: no tag can sneak in.
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
