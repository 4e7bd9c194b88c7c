"""gpux.yml errors in the user's words: pydantic's validation errors turned into one
``file:line:column: message`` line, and the small helpers every config message uses.

Kept apart from the schema (gpuxc/project/config.py) so that both the schema's validators and
the loader (gpuxc/project/config_load.py) can use them without importing each other.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gpuxc.errors import ConfigError, did_you_mean
from gpuxc.project.yamlsource import SourceMap


def validation_error(exc: ValidationError, smap: SourceMap, schema: type[BaseModel]) -> ConfigError:
    """The first of pydantic's errors as one ``file:line:column: message`` line (with a count of the others)."""
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the real key "missing": report the spelling, it is the cause.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _error_loc(first, smap)
    kind = first["type"]
    dotted = _dotted(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        where = smap.where(loc, key=True)
        parent = _dotted(loc[:-1]) or "the top level"
        hint = did_you_mean(key, _fields_at(schema, loc[:-1]))
        message = f"unknown key '{clip(key)}' in {parent}{hint}"
    elif kind == "missing":
        where = smap.where(loc[:-1])
        message = f"missing required key '{dotted}'"
    else:
        where = smap.where(loc)
        message = f"{dotted}: {_describe(first)}" if dotted else _describe(first)
    # One value failing every member of a union (int | str) is one problem, not several.
    others = len({_error_loc(e, smap) for e in errors}) - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others > 0 else ""
    return ConfigError(f"{where}: {message}{more}")


def _error_loc(error: Any, smap: SourceMap) -> tuple[Any, ...]:
    """The error's path in the document: pydantic appends union member tags ('constrained-int',
    'str') to a value's path; those name no place in the file, so they are dropped."""
    loc = tuple(error["loc"])
    if error["type"] in ("missing", "extra_forbidden"):
        return loc
    while len(loc) > 1 and loc not in smap.values and isinstance(loc[-1], str) and loc[:-1] in smap.values:
        loc = loc[:-1]
    return loc


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    if kind in ("value_error", "assertion_error"):
        msg = msg.split(", ", 1)[1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
    if kind.endswith("_type") or kind in ("literal_error", "enum"):
        value = error.get("input")
        got = (
            f", got {kind_of(value)} {clip(repr(value))}"
            if not isinstance(value, (dict, list))
            else f", got {kind_of(value)}"
        )
        return f"{msg[0].lower()}{msg[1:]}{got}"
    return msg


def _fields_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the object at ``loc`` in ``schema`` (for did-you-mean hints)."""
    current: Any = schema
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return []
    current = _unwrap(current, None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(tp: Any, part: Any) -> Any:
    """Step from a type annotation into the type at ``part`` (a field name or a list index)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0], part)
    if origin in (Union, types.UnionType):
        found = [f for f in (_unwrap(arg, part) for arg in typing.get_args(tp)) if f is not None]
        # The member with fields, when there is one (normalize: a method name or a {mean, std} mapping).
        models = [f for f in found if isinstance(f, type) and issubclass(f, BaseModel)]
        return (models or found or [None])[0]
    if part is None:
        return tp
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
        field = tp.model_fields.get(part)
        return field.annotation if field else None
    if origin is list and isinstance(part, int):
        return typing.get_args(tp)[0]
    if origin is dict:
        return typing.get_args(tp)[1]
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def kind_of(value: Any) -> str:
    """``a mapping``, ``an integer``...: what a YAML value is, in words."""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def clip(text: str, limit: int = 60) -> str:
    """``text`` escaped to one printable line of at most ``limit`` characters, for quoting a value."""
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."
