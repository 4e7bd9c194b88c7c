"""Bundle files: the filters, the rendered files (README.md, Dockerfile, requirements.txt), and
the runner copied, not rendered.

Golden files: ``tests/bundle/golden/<path in the bundle>.txt`` hold the rendered files of an
example-like project. After a deliberate template change, regenerate them with
``GPUXC_UPDATE_GOLDEN=1 python -m pytest tests/bundle/test_codegen.py`` and review the diff.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle.codegen import py_ident, py_literal, render, requirement, text_line
from gpuxc.bundle.runner_source import RENDERED_FILES, runner_files, template_root
from gpuxc.bundle.writer import write_runner
from gpuxc.cache.key import code_digest
from gpuxc.errors import GpuxcError

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
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
    """A template context like compile_target's, with fixed versions (the golden files use it)."""
    base = {
        "gpuxc_version": "0.1.0",
        "target": "cpu",
        "name": "image-classifier",
        "version": "1.0.0",
        "verification_status": "passed",
        "verification_reason": None,
        "requirements": ["onnxruntime==1.20.0", "numpy==2.1.0"],
        "serve_requirements": ["fastapi==0.110.0", "uvicorn==0.29.0", "prometheus-client==0.20.0"],
        "preprocessing": None,
        "python": "3.11",
        "port": 8080,
        "image": "image-classifier-cpu",
    }
    return {**base, **overrides}


def templates() -> list[str]:
    root = template_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.j2"))


def test_only_the_rendered_files_are_templates() -> None:
    assert templates() == sorted(RENDERED_FILES)


def test_every_runner_source_is_plain_python_that_parses() -> None:
    sources = sorted(template_root().rglob("*.py"))
    assert sources
    for source in sources:
        ast.parse(source.read_text(encoding="utf-8"), filename=str(source))


def test_the_runner_is_every_runner_source_and_the_adapter() -> None:
    files = runner_files("onnxruntime/runtime.py")
    runner = template_root() / "runner"
    assert files["__main__.py"] == runner / "__main__.py"
    assert files["runner/runtime.py"] == template_root() / "onnxruntime" / "runtime.py"
    assert {p.name for p in files.values()} == {p.name for p in runner.glob("*.py")} | {"runtime.py"}


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
    (tmp_path / "runner" / "README.md.j2").write_text("OVERRIDDEN {{ target | md_code }}\n", encoding="utf-8")
    assert render("runner/README.md.j2", context(), (tmp_path,)) == "OVERRIDDEN cpu\n"


def test_a_plain_adapter_is_copied_and_a_template_adapter_rendered(tmp_path: Path) -> None:
    """A target's template_dir may hold its adapter as plain Python or (older plugins) as a
    ``.py.j2`` template rendered with the same context and checked filters."""
    extra = tmp_path / "plugin-templates"
    (extra / "echo").mkdir(parents=True)
    (extra / "echo" / "runtime.py").write_text("PLAIN = '{{ target }}'\n", encoding="utf-8")
    (extra / "echo" / "runtime.py.j2").write_text("TARGET = {{ target | py_literal }}\n", encoding="utf-8")
    write_runner(tmp_path / "plain", context(), "echo/runtime.py", (extra,))
    assert (tmp_path / "plain" / "runner" / "runtime.py").read_text(encoding="utf-8") == "PLAIN = '{{ target }}'\n"
    write_runner(tmp_path / "rendered", context(target="it's"), "echo/runtime.py.j2", (extra,))
    assert (tmp_path / "rendered" / "runner" / "runtime.py").read_text(encoding="utf-8") == 'TARGET = "it\'s"\n'
    api = (template_root() / "runner" / "api.py").read_bytes()
    for bundle in ("plain", "rendered"):  # the rest of the runner: copies of gpuxc's sources
        assert (tmp_path / bundle / "runner" / "api.py").read_bytes() == api


def test_an_adapter_in_no_template_dir_is_an_internal_error(tmp_path: Path) -> None:
    with pytest.raises(GpuxcError, match="no template file nowhere/runtime.py"):
        write_runner(tmp_path, context(), "nowhere/runtime.py")


def test_the_build_cache_key_covers_the_runner_sources(tmp_path: Path) -> None:
    copy = tmp_path / "templates"
    shutil.copytree(template_root(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_digest([], [copy])["templates:templates"]
    compare_py = copy / "runner" / "compare.py"
    compare_py.write_text(compare_py.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    assert code_digest([], [copy])["templates:templates"] != before


# -- compiled bundles: the runner copied, no injection ------------------------------------------


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

    # ...and not into any Python file: those are the runner's sources, copied.
    benign_code = generated_python(benign)
    hostile_code = generated_python(hostile)
    assert hostile_code == benign_code
    sources = runner_files("onnxruntime/runtime.py")
    for rel, text in hostile_code.items():
        assert text == sources[rel].read_text(encoding="utf-8"), rel
    readme = (hostile / "README.md").read_text(encoding="utf-8")
    assert "{{" not in readme and "$(id)" not in readme


# -- golden files: the rendered files ----------------------------------------------------------


def test_rendered_files_match_the_golden_files() -> None:
    rendered = {rel: render(template, context()) for template, rel in RENDERED_FILES.items()}
    goldens = {rel: GOLDEN_DIR / f"{rel}.txt" for rel in rendered}
    if UPDATE_GOLDEN:
        GOLDEN_DIR.mkdir(exist_ok=True)
        for rel, text in rendered.items():
            goldens[rel].write_text(text, encoding="utf-8")
    missing = [rel for rel, path in goldens.items() if not path.is_file()]
    assert not missing, f"no golden file for {missing}; run with GPUXC_UPDATE_GOLDEN=1 and review"
    stale = sorted(p.name for p in GOLDEN_DIR.glob("*.txt") if p.name[: -len(".txt")] not in rendered)
    assert not stale, f"golden files for files no longer rendered: {stale}"
    for rel, text in rendered.items():
        assert text == goldens[rel].read_text(encoding="utf-8"), (
            f"{rel} differs from {goldens[rel]}; if the template change is intended, "
            "rerun with GPUXC_UPDATE_GOLDEN=1 and review the diff"
        )
