"""A tiny YAML writer for the fuzzer: trees of ``Y`` nodes with tags, anchors, aliases,
complex and duplicate keys, in block or flow style, rendered to text that PyYAML reads
back as written (unlike ``yaml.safe_dump``, which cannot write duplicate keys, tags on
scalars, or an alias wherever we like)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

_RESOLVER = yaml.SafeLoader("")
_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./+ -]*")


@dataclass
class Y:
    """A YAML node: kind is map (value: list of (Y, Y)), seq (list of Y), scalar (a Python
    value), raw (a YAML token written as is) or alias (an anchor name)."""

    kind: str
    value: Any
    tag: str | None = None
    anchor: str | None = None
    flow: bool = False
    style: str = "plain"  # scalars: plain | single | double | ascii | alt
    extra: dict[str, Any] = field(default_factory=dict)


def from_data(data: Any) -> Y:
    """A plain Python tree (dicts, lists, scalars) as ``Y`` nodes."""
    if isinstance(data, Y):
        return data
    if isinstance(data, dict):
        return Y("map", [(from_data(k), from_data(v)) for k, v in data.items()])
    if isinstance(data, list):
        return Y("seq", [from_data(v) for v in data])
    return Y("scalar", data)


def render(root: Y) -> str:
    if _inline(root):
        return _flow(root) + "\n"
    head = _props(root)
    lines = [f"--- {head}"] if head else []
    lines += _block(root, 0)
    return "\n".join(lines) + "\n"


def _props(node: Y) -> str:
    return " ".join(p for p in (f"&{node.anchor}" if node.anchor else "", node.tag or "") if p)


def _inline(node: Y) -> bool:
    return node.kind not in ("map", "seq") or node.flow or not node.value


def _flow(node: Y) -> str:
    if node.kind == "alias":
        return f"*{node.value}"
    props = _props(node)
    pre = f"{props} " if props else ""
    if node.kind == "map":
        return pre + "{" + ", ".join(f"{_flow_key(k)}: {_flow(v)}" for k, v in node.value) + "}"
    if node.kind == "seq":
        return pre + "[" + ", ".join(_flow(v) for v in node.value) + "]"
    if node.kind == "raw":
        return pre + str(node.value)
    token = scalar_token(node.value, node.style)
    return (pre + token) if token else pre.rstrip() or "null"


def _flow_key(node: Y) -> str:
    if node.kind in ("map", "seq"):
        return f"? {_flow(node)}"
    text = _flow(node)
    return f"{text} " if node.kind == "alias" else text


def _block(node: Y, indent: int) -> list[str]:
    sp = " " * indent
    lines: list[str] = []
    if node.kind == "map":
        for key, value in node.value:
            if key.kind in ("map", "seq"):
                lines.append(f"{sp}? {_flow(key)}")
                prefix = f"{sp}:"
            else:
                prefix = f"{sp}{_flow_key(key)}:"
            if _inline(value):
                lines.append(f"{prefix} {_flow(value)}")
            else:
                props = _props(value)
                lines.append(f"{prefix} {props}" if props else prefix)
                lines += _block(value, indent + 2)
    else:
        for value in node.value:
            if _inline(value):
                lines.append(f"{sp}- {_flow(value)}")
            else:
                props = _props(value)
                lines.append(f"{sp}- {props}" if props else f"{sp}-")
                lines += _block(value, indent + 2)
    return lines


def scalar_token(value: Any, style: str = "plain") -> str:
    """``value`` as a YAML token that reads back as ``value`` (``style`` picks among spellings)."""
    if value is None:
        return {"alt": "~", "single": "null", "double": "Null"}.get(style, "null")
    if isinstance(value, bool):
        if style == "alt":
            return "yes" if value else "no"
        return "true" if value else "false"
    if isinstance(value, int):
        if style == "alt" and value >= 0:
            return hex(value)
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan" if style != "alt" else ".NaN"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "." not in text:  # PyYAML's float pattern needs a dot: 1e+300 would read as a string
            text = text.replace("e", ".0e") if "e" in text else text + ".0"
        return text
    text = str(value)
    if style == "plain" and _plain_ok(text):
        return text
    if style == "single" and all(c.isprintable() for c in text):
        return "'" + text.replace("'", "''") + "'"
    surrogates = any("\ud800" <= c <= "\udfff" for c in text)  # only \u escapes can write these
    return json.dumps(text, ensure_ascii=style == "ascii" or surrogates)


def _plain_ok(text: str) -> bool:
    if not _PLAIN.fullmatch(text) or text.endswith(" ") or " #" in text or text.startswith("- "):
        return False
    return _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str"
