"""Safe YAML loading that remembers where every value came from.

PyYAML's ``safe_load`` forgets positions, and a config error that cannot say
``gpux.yml:12:5`` sends users hunting. We compose the document with the *safe*
loader (no Python tags, ever), then walk the node tree ourselves, recording the
position of each key and value by its path (``("inputs", "image", "shape")``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpuxc.errors import ConfigError, first_line

Path_ = tuple[str | int, ...]

# Anchors and aliases can make a small file expand exponentially ("billion laughs");
# a real gpux.yml has a few hundred values at most.
MAX_VALUES = 100_000
# Deeper nesting than this is no config (and a self-referencing alias nests forever).
MAX_DEPTH = 64
# No setting needs a bigger integer; hex/octal/binary spellings have no length limit, and a
# 5000-digit number cannot even be written to JSON (the manifest) by Python.
MAX_INT_BITS = 64
# The only tags a collection may carry: a tag like !!python/object on a mapping or a list
# would otherwise be dropped silently by our own walk of the node tree.
_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based

    @classmethod
    def of(cls, mark: yaml.Mark | None) -> Position:
        if mark is None:
            return cls(1, 1)
        return cls(mark.line + 1, mark.column + 1)


@dataclass
class SourceMap:
    """Where each value (and each mapping key) of a YAML document starts."""

    file: str
    values: dict[Path_, Position] = field(default_factory=dict)
    keys: dict[Path_, Position] = field(default_factory=dict)

    def where(self, path: Path_, *, key: bool = False) -> str:
        """``file:line:column`` of ``path``, or of its nearest known ancestor."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                pos = table[probe]
                return f"{self.file}:{pos.line}:{pos.column}"
            if probe in self.values:
                pos = self.values[probe]
                return f"{self.file}:{pos.line}:{pos.column}"
            probe = probe[:-1]
        pos = self.values.get((), Position(1, 1))
        return f"{self.file}:{pos.line}:{pos.column}"

    def rename(self, old: Path_, new: Path_) -> None:
        """Move every recorded path under ``old`` to ``new`` (used when normalising shapes)."""
        for table in (self.values, self.keys):
            for path in [p for p in table if p[: len(old)] == old]:
                table[new + path[len(old) :]] = table.pop(path)


GPUX_YML = ("a gpux.yml file", "expected a mapping with at least 'name' and 'model'")


def load_yaml(path: Path, display_name: str | None = None,
              kind: tuple[str, str] = GPUX_YML) -> tuple[Any, SourceMap]:  # fmt: skip
    """Parse ``path`` with the safe loader; return plain Python data and its source map. ``kind``: what
    the file should be (said when it is a directory) and what to say when it is empty."""
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, expected {kind[0]}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read ({exc.strerror})") from None
    return parse_yaml(text, name, kind[1])


def parse_yaml(text: str, name: str, if_empty: str = GPUX_YML[1]) -> tuple[Any, SourceMap]:
    smap = SourceMap(name)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        pos = Position.of(exc.problem_mark or exc.context_mark)
        problem = (exc.problem or exc.context or "syntax error").strip()
        if exc.problem and exc.context and exc.context_mark is not None:
            # e.g. an unclosed bracket: say where the construct it belongs to started.
            start = Position.of(exc.context_mark)
            problem += f" ({exc.context.strip()} started at {start.line}:{start.column})"
        raise ConfigError(f"{name}:{pos.line}:{pos.column}: invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:  # a control character; str(exc) is two lines and names no line
        line, column = text.count("\n", 0, exc.position) + 1, exc.position - text.rfind("\n", 0, exc.position)
        raise ConfigError(
            f"{name}:{line}:{column}: invalid YAML: character #x{exc.character:04x}: {exc.reason}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}:1:1: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{name}:1:1: invalid YAML: the document nests too deeply") from None
    if node is None:
        raise ConfigError(f"{name}:1:1: the file is empty; {if_empty}")
    builder = _Builder(smap)
    data = builder.build(node, ())
    return data, smap


class _Builder:
    def __init__(self, smap: SourceMap) -> None:
        self.smap = smap
        self.count = 0
        # A SafeLoader instance only to resolve scalar tags (int, float, bool, null, str).
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise ConfigError(
                f"{self.smap.where(path)}: the document expands to more than {MAX_VALUES} values (anchors/aliases?)"
            )
        if len(path) > MAX_DEPTH:
            pos = Position.of(node.start_mark)
            raise ConfigError(
                f"{self.smap.file}:{pos.line}:{pos.column}: the document nests deeper than {MAX_DEPTH} levels "
                "(a self-referencing alias?)"
            )
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_COLLECTION_TAGS:
            pos = Position.of(node.start_mark)
            raise ConfigError(f"{self.smap.file}:{pos.line}:{pos.column}: unsupported YAML tag '{node.tag}'")
        self.smap.values[path] = Position.of(node.start_mark)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    pos = Position.of(key_node.start_mark)
                    raise ConfigError(f"{self.smap.file}:{pos.line}:{pos.column}: mapping keys must be plain scalars")
                if key_node.tag == "tag:yaml.org,2002:merge":
                    pos = Position.of(key_node.start_mark)
                    raise ConfigError(
                        f"{self.smap.file}:{pos.line}:{pos.column}: YAML merge keys ('<<') are not supported"
                    )
                key = self._construct(key_node)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    pos = Position.of(key_node.start_mark)
                    raise ConfigError(f"{self.smap.file}:{pos.line}:{pos.column}: unsupported key type")
                key = str(key) if not isinstance(key, str) else key
                if key in out:
                    pos = Position.of(key_node.start_mark)
                    raise ConfigError(f"{self.smap.file}:{pos.line}:{pos.column}: duplicate key '{key}'")
                self.smap.keys[path + (key,)] = Position.of(key_node.start_mark)
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._construct(node)

    def _construct(self, node: yaml.Node) -> Any:
        try:
            value = self.constructor.construct_object(node)
            if isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value):
                # "\ud83d\ude00" escapes spell UTF-16: join the pairs (as JSON does); a lone one is no text.
                value = value.encode("utf-16", "surrogatepass").decode("utf-16")
            if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
                raise ValueError(f"more than {MAX_INT_BITS} bits")
            return value
        except UnicodeDecodeError:
            pos = Position.of(node.start_mark)
            raise ConfigError(f"{self.smap.file}:{pos.line}:{pos.column}: a \\u escape is a lone surrogate") from None
        except yaml.constructor.ConstructorError as exc:
            pos = Position.of(node.start_mark)
            raise ConfigError(f"{self.smap.file}:{pos.line}:{pos.column}: {exc.problem}") from None
        # PyYAML's scalar constructors fail with ValueError, KeyError, AttributeError... (!!int x, !!timestamp 3)
        except Exception as exc:
            pos = Position.of(node.start_mark)
            kind = node.tag.rsplit(":", 1)[-1]
            raise ConfigError(
                f"{self.smap.file}:{pos.line}:{pos.column}: not a valid {kind}: {first_line(exc)}"
            ) from None
