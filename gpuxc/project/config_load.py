"""Finding and reading a gpux.yml: the file, its YAML, its validation into a :class:`GpuxConfig`.

Every error is a ``ConfigError`` naming ``file:line:column`` (gpuxc/project/config_errors.py
words them); the schema itself is gpuxc/project/config.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gpuxc.errors import ConfigError
from gpuxc.project.config import GpuxConfig
from gpuxc.project.config_errors import clip, kind_of, validation_error
from gpuxc.project.yamlsource import SourceMap, load_yaml

CONFIG_NAMES = ("gpux.yml", "gpux.yaml")


def find_config(project: Path, config: Path | None = None) -> Path:
    """The gpux.yml to use for ``project`` (a folder or a file), or ``config`` when given."""
    if config is not None:
        return config if config.is_absolute() else (Path.cwd() / config)
    if project.is_file():
        return project
    if not project.exists():
        raise ConfigError(f"{project}: no such file or directory")
    for name in CONFIG_NAMES:
        candidate = project / name
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{project}: no gpux.yml here (run 'gpuxc init MODEL.onnx' to write one)")


def load_config(path: Path) -> GpuxConfig:
    """Read and validate a gpux.yml; every error is a ``ConfigError`` naming file:line:column."""
    display = _display(path)
    data, smap = load_yaml(path, display)
    return parse_config(data, smap, path)


def parse_config(data: Any, smap: SourceMap, path: Path) -> GpuxConfig:
    """Validate YAML ``data`` read from ``path``; ``smap`` says where each value is in the file."""
    if not isinstance(data, dict):
        raise ConfigError(f"{smap.where(())}: expected a mapping at the top level, got {kind_of(data)}")
    data = _normalise_tensor_lists(data, smap)
    _check_unique_tensor_names(data, smap)
    try:
        cfg = GpuxConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, smap, GpuxConfig) from None
    cfg._source = smap
    cfg._path = path.resolve()
    return cfg


def _normalise_tensor_lists(data: dict[str, Any], smap: SourceMap) -> dict[str, Any]:
    """GPUX accepts ``inputs`` as ``{name: spec}`` or ``[{name: ..., ...}]``: make both a list.

    Positions move with the values so that errors still point into the file.
    """
    data = dict(data)
    for section in ("inputs", "outputs"):
        value = data.get(section)
        if isinstance(value, dict):
            items = []
            for index, (name, spec) in enumerate(value.items()):
                old = (section, name)
                new = (section, index)
                key_pos = smap.keys.get(old)
                smap.rename(old, new)
                if spec is None:
                    spec = {}
                if isinstance(spec, dict):
                    if "name" in spec:
                        raise ConfigError(
                            f"{smap.where(new + ('name',), key=True)}: '{section}.{clip(str(name))}' is a mapping key "
                            "already naming the tensor; drop 'name' or use the list form"
                        )
                    spec = {"name": name, **spec}
                    if key_pos is not None:
                        smap.values[new + ("name",)] = key_pos
                        smap.keys[new + ("name",)] = key_pos
                items.append(spec)
            data[section] = items
        elif value is None and section in data:
            data[section] = []
    return data


def _check_unique_tensor_names(data: dict[str, Any], smap: SourceMap) -> None:
    """A tensor named twice, reported at its second ``name`` (the model validator cannot say where)."""
    for section in ("inputs", "outputs"):
        items = data.get(section)
        if not isinstance(items, list):
            continue
        seen: set[str] = set()
        for index, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            if name in seen:
                raise ConfigError(f"{smap.where((section, index, 'name'))}: {section} declares '{clip(name)}' twice")
            seen.add(name)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
