"""Rendering the bundle files that differ per build from Jinja templates, safely.

The runner itself is plain Python, copied into bundles (gpuxc.bundle.writer.write_runner): it
reads names, shapes, labels and settings from gpux-bundle.json at run time. Only README.md,
Dockerfile and requirements.txt are rendered, and a third-party target's adapter when it is a
``.py.j2`` template. User and model strings never become template code: every ``{{ }}`` in a
template ends in a filter that is safe where it is used: ``py_literal`` (a ``repr`` of plain
data), ``py_ident`` (a checked identifier), ``doc_text`` (docstrings), ``docker_word``,
``text_line`` (comments), ``md_text`` and ``md_code`` (Markdown), ``requirement``. Every rendered
``.py`` file is parsed with ``ast.parse`` before it is written. docs/codegen-safety.md lists
every string source; tests/bundle/test_injection.py fuzzes them.
"""

from __future__ import annotations

import ast
import functools
import keyword
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuxc.bundle.runner_source import template_root
from gpuxc.errors import GpuxcError

if TYPE_CHECKING:
    import jinja2  # imported in environment(): only a build renders


def py_literal(value: Any) -> str:
    """A Python literal for plain data; anything else is a programming error."""
    _check_plain(value)
    text = repr(value)
    ast.literal_eval(text)  # must round-trip as a literal
    return text


def py_ident(value: Any) -> str:
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value) or not value.isascii():
        raise GpuxcError(f"internal: {value!r} is not a safe Python identifier")
    return value


def text_line(value: Any) -> str:
    """Plain text on one line for comments and Markdown code spans: control characters, line and
    paragraph separators and backticks become spaces; at most 200 characters."""
    text = "".join(ch if ch.isprintable() and ch != "`" else " " for ch in str(value))
    return text.strip()[:200]


def doc_text(value: Any) -> str:
    """Text inside a generated docstring or comment: one line, and no quote or backslash that could
    end the string or start an escape."""
    return "".join(" " if ch in "\"'\\" else ch for ch in text_line(value)).strip()


# Everything Markdown (CommonMark/GFM) gives a meaning to inside a line of prose.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~#!])")


def md_text(value: Any) -> str:
    """Text in Markdown prose: one line, every character with a Markdown/HTML meaning backslash-escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text_line(value))


REQUIREMENT_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?"  # name[extras]
    r"([<>=!~]=?[A-Za-z0-9.*+!_-]+(,[<>=!~]=?[A-Za-z0-9.*+!_-]+)*)?"  # specifiers
    r"(; [A-Za-z0-9_ .'\"<>=!()-]+)?$"  # environment marker
)


DOCKER_WORD_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


def docker_word(value: Any) -> str:
    """A value placed bare in a Dockerfile (image tag, name): a checked word, never quoted text."""
    text = str(value).lower()
    if not DOCKER_WORD_RE.match(text):
        raise GpuxcError(f"internal: {value!r} is not a safe Dockerfile word")
    return text


def requirement(value: Any) -> str:
    if not isinstance(value, str) or not REQUIREMENT_RE.match(value):
        raise GpuxcError(f"internal: {value!r} is not a plain requirement line")
    return value


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise GpuxcError("internal: value nests too deeply for a literal")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise GpuxcError(f"internal: {type(value).__name__} cannot be rendered as a literal")


@functools.lru_cache(maxsize=8)
def environment(extra_dirs: tuple[Path, ...] = ()) -> jinja2.Environment:
    import jinja2

    loaders = [jinja2.FileSystemLoader(str(d)) for d in extra_dirs] + [jinja2.FileSystemLoader(str(template_root()))]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # output is Python/text; escaping is the filters' job
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["py_literal"] = py_literal
    env.filters["py_ident"] = py_ident
    env.filters["text_line"] = text_line
    env.filters["doc_text"] = doc_text
    env.filters["md_text"] = md_text
    env.filters["md_code"] = text_line  # inside a Markdown code span everything but a backtick is literal
    env.filters["requirement"] = requirement
    env.filters["docker_word"] = docker_word
    return env


def render(template: str, context: dict[str, Any], extra_dirs: tuple[Path, ...] = ()) -> str:
    text = environment(extra_dirs).get_template(template).render(**context)
    if template.endswith(".py.j2"):
        _check_python(text, template)
    return text


@functools.lru_cache(maxsize=64)
def _check_python(text: str, template: str) -> None:
    """Parse a rendered file (remembered: every build renders the same runner text again)."""
    try:
        ast.parse(text, filename=template)
    except SyntaxError as exc:
        raise GpuxcError(
            f"internal: template {template} rendered invalid Python (line {exc.lineno}): {exc.msg}"
        ) from None
    except ValueError as exc:  # a NUL character
        raise GpuxcError(f"internal: template {template} rendered invalid Python: {exc}") from None
