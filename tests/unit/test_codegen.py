"""Generated code: literal/identifier filters, templates that always parse, and no injection.

Golden files: ``tests/golden/<path in the bundle>.txt`` hold the generated runner of an
example-like project. After a deliberate template change, regenerate them with
``GPUXC_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_codegen.py`` and review the diff.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import pytest

from fixtures import models
from gpuxc import __version__
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle.codegen import py_ident, py_literal, render, requirement, template_root, text_line
from gpuxc.bundle.writer import RUNNER_TEMPLATES
from gpuxc.errors import GpuxcError

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
UPDATE_GOLDEN = os.environ.get("GPUXC_UPDATE_GOLDEN") == "1"

HOSTILE = [
    "it's",
    'say "hi"',
    "'''",
    '"""',
    '"""; import os; os.system(\'id\'); """',
    "line one\nline two\r\n",
    "sep\u2028arator\u2029",
    "{{ 7 * 7 }}",
    "{% for x in range(3) %}x{% endfor %}",
    "{# comment #}",
    "$(id)",
    "`id`",
    "nul\x00byte",
    "back\\slash\\",
    "\\N{BULLET}",
    "🙂 ünïcödé",
    "",
]


# -- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", HOSTILE)
def test_py_literal_round_trips_hostile_strings(payload: str) -> None:
    text = py_literal(payload)
    assert ast.literal_eval(text) == payload
    # The literal stays on one line: no raw newline/separator can end a statement early.
    assert "\n" not in text and "\r" not in text and "\u2028" not in text


def test_py_literal_round_trips_nested_plain_data() -> None:
    value = {"labels": HOSTILE, "nested": [{"k": None, "n": 1.5, "b": True}], "x": -3}
    assert ast.literal_eval(py_literal(value)) == value


def test_py_literal_output_is_usable_inside_generated_code() -> None:
    # What a template does with it: an assignment whose value must equal the payload.
    for payload in HOSTILE:
        namespace: dict[str, Any] = {}
        exec(compile(f"VALUE = {py_literal(payload)}\n", "<generated>", "exec"), namespace)  # noqa: S102
        assert namespace["VALUE"] == payload


@pytest.mark.parametrize("value", [object(), b"bytes", {1, 2}, [object()], {"k": Path("/")}])
def test_py_literal_refuses_non_plain_values(value: Any) -> None:
    with pytest.raises(GpuxcError):
        py_literal(value)


@pytest.mark.parametrize("name", ["runner", "_private", "Adapter2"])
def test_py_ident_accepts_identifiers(name: str) -> None:
    assert py_ident(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "a b", "a-b", "a.b", "class", "import", "None", "x;y", "é", "nul\x00", None, 3],
)
def test_py_ident_refuses_non_identifiers_and_keywords(name: Any) -> None:
    with pytest.raises(GpuxcError):
        py_ident(name)


def test_text_line_strips_control_characters_and_backticks() -> None:
    text = text_line("a\nb`c`\x00d\u2028e")
    assert "\n" not in text and "`" not in text and "\x00" not in text and "\u2028" not in text
    assert text.replace(" ", "") == "abcde"
    assert len(text_line("x" * 1000)) == 200


@pytest.mark.parametrize("line", ["numpy==2.1.0", "onnxruntime>=1.18", "fastapi", "uvicorn[standard]==0.30.0"])
def test_requirement_accepts_plain_pins(line: str) -> None:
    assert requirement(line) == line


@pytest.mark.parametrize(
    "line",
    [
        "numpy\n--index-url http://evil",
        "-e .",
        "git+https://x/y",
        "numpy --index-url=http://evil",
        "../local.whl",
        "",
    ],
)
def test_requirement_refuses_anything_else(line: str) -> None:
    with pytest.raises(GpuxcError):
        requirement(line)


# -- templates -------------------------------------------------------------------------------


def context(**overrides: Any) -> dict[str, Any]:
    base = {
        "gpuxc_version": __version__,
        "target": "cpu",
        "name": "demo",
        "version": "1.0.0",
        "verification_status": "passed",
        "verification_reason": None,
        "requirements": ["onnxruntime==1.0", "numpy==2.0"],
        "serve_requirements": ["fastapi==0.110", "uvicorn==0.29"],
    }
    return {**base, **overrides}


def python_templates() -> list[str]:
    root = template_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py.j2"))


def test_every_runner_template_is_rendered_into_bundles() -> None:
    runner = {t for t in python_templates() if t.startswith("runner/")}
    assert runner <= set(RUNNER_TEMPLATES)


@pytest.mark.parametrize("template", python_templates())
def test_each_python_template_renders_valid_python(template: str) -> None:
    text = render(template, context())
    ast.parse(text)


def test_render_refuses_a_template_that_renders_invalid_python(tmp_path: Path) -> None:
    (tmp_path / "broken.py.j2").write_text("def f(:\n    return {{ target | py_literal }}\n", encoding="utf-8")
    with pytest.raises(GpuxcError, match="rendered invalid Python"):
        render("broken.py.j2", context(), (tmp_path,))


def test_render_refuses_an_undefined_variable(tmp_path: Path) -> None:
    import jinja2

    (tmp_path / "undefined.py.j2").write_text("X = {{ not_given }}\n", encoding="utf-8")
    with pytest.raises(jinja2.UndefinedError):
        render("undefined.py.j2", context(), (tmp_path,))
    (tmp_path / "filtered.py.j2").write_text("X = {{ not_given | py_literal }}\n", encoding="utf-8")
    with pytest.raises((jinja2.UndefinedError, GpuxcError)):
        render("filtered.py.j2", context(), (tmp_path,))


def test_extra_template_dirs_come_first(tmp_path: Path) -> None:
    (tmp_path / "runner").mkdir()
    (tmp_path / "runner" / "__init__.py.j2").write_text("OVERRIDDEN = True\n", encoding="utf-8")
    assert render("runner/__init__.py.j2", context(), (tmp_path,)) == "OVERRIDDEN = True\n"


# -- compiled bundles: no injection ----------------------------------------------------------


def generated_python(bundle: Path) -> dict[str, str]:
    files = sorted(bundle.glob("runner/*.py")) + [bundle / "__main__.py"]
    return {p.relative_to(bundle).as_posix(): p.read_text(encoding="utf-8") for p in files}


def compile_mlp(make_project, tmp_path: Path, config: dict[str, Any], out: str) -> Path:
    project = make_project(models.mlp(), {"name": "demo", "version": "1.0.0", **config})
    [result] = compile_project(project, ["cpu"], tmp_path / out)
    assert result.verification["status"] == "passed"
    return result.path


def test_hostile_strings_in_the_config_do_not_change_generated_code(make_project, tmp_path: Path) -> None:
    benign = compile_mlp(
        make_project,
        tmp_path,
        {
            "description": "plain",
            "metadata": {"author": "someone"},
            "inputs": {"x": {"description": "features"}},
            "outputs": {"probs": {"labels": ["a", "b", "c"]}},
        },
        "benign",
    )
    payload = "".join(HOSTILE)
    hostile_config = {
        "description": payload,
        "metadata": {p or "empty": p for p in HOSTILE} | {"nested": {"list": HOSTILE}},
        "inputs": {"x": {"description": payload}},
        "outputs": {"probs": {"labels": [HOSTILE[4], HOSTILE[7], HOSTILE[12]]}},
    }
    hostile = compile_mlp(make_project, tmp_path, hostile_config, "hostile")

    # The payloads did travel through the pipeline into the manifest...
    manifest = json.loads((hostile / "gpux-bundle.json").read_text(encoding="utf-8"))
    assert manifest["description"] == payload
    assert manifest["inputs"][0]["description"] == payload
    assert manifest["outputs"][0]["labels"] == hostile_config["outputs"]["probs"]["labels"]
    assert manifest["metadata"]["nested"]["list"] == HOSTILE

    # ...and not into any generated Python file.
    benign_code = generated_python(benign)
    hostile_code = generated_python(hostile)
    assert benign_code.keys() == hostile_code.keys()
    for rel, text in hostile_code.items():
        assert ast.dump(ast.parse(text)) == ast.dump(ast.parse(benign_code[rel])), rel
    readme = (hostile / "README.md").read_text(encoding="utf-8")
    assert "{{" not in readme and "$(id)" not in readme


# -- golden files ----------------------------------------------------------------------------

EXAMPLE_LIKE = {
    "name": "image-classifier",
    "version": "1.0.0",
    "description": "A tiny image classifier",
    "inputs": {"image": {"type": "float32", "shape": [1, 3, 32, 32], "description": "RGB image, NCHW"}},
    "outputs": {"logits": {"type": "float32", "shape": [1, 4], "labels": ["cat", "dog", "bird", "fish"]}},
    "runtime": {"gpu": {"memory": "2GB", "backend": "auto"}, "batch_size": 1, "timeout": 30},
    "serving": {"host": "127.0.0.1", "port": 8080},
    "build": {"targets": ["cpu"]},
}


def test_generated_runner_matches_the_golden_files(make_project, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn(), EXAMPLE_LIKE)
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    generated = generated_python(result.path)
    goldens = {rel: GOLDEN_DIR / f"{rel}.txt" for rel in generated}
    if UPDATE_GOLDEN:
        for rel, text in generated.items():
            goldens[rel].parent.mkdir(parents=True, exist_ok=True)
            goldens[rel].write_text(text, encoding="utf-8")
    missing = [rel for rel, path in goldens.items() if not path.is_file()]
    assert not missing, f"no golden file for {missing}; run with GPUXC_UPDATE_GOLDEN=1 and review"
    stale = sorted(
        p.relative_to(GOLDEN_DIR).as_posix()[: -len(".txt")]
        for p in GOLDEN_DIR.rglob("*.py.txt")
        if p.relative_to(GOLDEN_DIR).as_posix()[: -len(".txt")] not in generated
    )
    assert not stale, f"golden files for files no longer generated: {stale}"
    for rel, text in generated.items():
        assert text == goldens[rel].read_text(encoding="utf-8"), (
            f"{rel} differs from {goldens[rel]}; if the template change is intended, "
            "rerun with GPUXC_UPDATE_GOLDEN=1 and review the diff"
        )
