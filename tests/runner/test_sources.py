"""The runner sources (templates/runner, templates/<target>/runtime.py): what they may import.

Bundles have no gpuxc to import, and gpuxc loads compare.py, layout.py, inputs.py and isa.py itself
(gpuxc.bundle.runner_source): those import nothing of the runner either.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from gpuxc.bundle.runner_source import runner_source, template_root

STDLIB = set(sys.stdlib_module_names)


def import_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(("name", "allowed"),
                         [("compare", {"numpy"}), ("layout", set()), ("inputs", {"numpy"}), ("isa", set())])
def test_modules_gpuxc_loads_import_only_numpy_and_the_standard_library(name: str, allowed: set[str]) -> None:
    assert import_roots(runner_source(name)) - STDLIB <= allowed


@pytest.mark.parametrize("source", sorted(template_root().rglob("*.py")), ids=lambda p: p.parent.name + "/" + p.name)
def test_no_runner_source_imports_gpuxc(source: Path) -> None:
    assert not {r for r in import_roots(source) if r.startswith("gpuxc")}
