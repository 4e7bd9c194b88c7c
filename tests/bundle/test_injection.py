"""Injection-proof code generation: every string that reaches a generated file, fuzzed.

docs/codegen-safety.md lists every string source (gpux.yml fields, model fields) and how it
enters the bundle. Each (source, payload) pair is one test: the value is either refused at
validation with a one-line ``ConfigError`` naming ``gpux.yml:line:column`` and the field, or it
is accepted, and then

* the template context is the benign one (no project string reaches a template);
* every ``.py`` file of the bundle is a byte-for-byte copy of its runner source (the runner is
  plain Python, copied: it reads every project value from the manifest at run time);
* the Dockerfile (instructions, JSON arrays, ``shlex`` tokens), README.md (Markdown token
  structure, ``shlex`` tokens of its shell lines) and requirements.txt keep the benign structure;
* gpux-bundle.json is valid JSON holding the value unchanged where the source says, or (model
  strings that reach nothing) not at all.

The bulk validates, loads, renders and writes the manifest with the pipeline's own functions but
skips the target compile (tens of ms each, and no project string reaches it). Real ``cpu``
compiles then check the mirror of the template context, every payload in the model's tensor
names (reference data included), and a kitchen-sink project with every payload in every accepted
source at once, whose runner is executed (``info``, ``run``, ``verify``) while no marker file may
appear. Template-level tests feed payloads straight into the template context of the rendered
files (defence in depth: the filters hold even if validation did not) and check that every
``{{ }}`` in every template ends in a filter that is safe for its kind of file.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
import numpy as np
import onnx
import pytest
import yaml

try:
    from markdown_it import MarkdownIt
except ImportError:  # pragma: no cover - markdown-it-py comes with rich (typer)
    MarkdownIt = None

from fixtures import models
from gpuxc import __version__
from gpuxc.build.assemble import assemble_manifest
from gpuxc.build.pipeline import compile_project
from gpuxc.build.project import Project
from gpuxc.bundle import writer as bundle_mod
from gpuxc.bundle.codegen import REQUIREMENT_RE, environment, render
from gpuxc.bundle.manifest import BuildInfo, Verification
from gpuxc.bundle.requirements import SERVE_DISTS, pinned
from gpuxc.bundle.runner_source import RENDERED_FILES, runner_files, template_root
from gpuxc.errors import ConfigError, GpuxcError, ModelError
from gpuxc.plugin import get_registry
from gpuxc.project.config import GpuxConfig
from gpuxc.project.config_load import load_config
from gpuxc.project.model import load_model
from gpuxc.project.preprocessing import resolve_preprocessing
from gpuxc.project.scaffold import config_for
from gpuxc.project.signature import check_signature
from gpuxc.targets import Artifact, RuntimeSpec, Target

PAYLOADS: dict[str, str] = {
    "quotes": 'it\'s "quoted"',
    "triple-double": '"""',
    "triple-single": "'''",
    "py-break": '"""; import os; os.system(\'touch pwned-py\'); """',
    "newline": "line one\nline two",
    "cr": "carriage\rreturn",
    "crlf": "windows\r\nline",
    "u2028": "line\u2028separator",
    "u2029": "paragraph\u2029separator",
    "jinja-expr": "{{ 7 * 7 }}",
    "jinja-stmt": "{% for x in range(3) %}x{% endfor %}",
    "jinja-ssti": "{{ cycler.__init__.__globals__.os.system('touch pwned-jinja') }}",
    "jinja-comment": "{# hidden #}",
    "shell-subst": "$(touch pwned-sh)",
    "backticks": "`touch pwned-bt`",
    "nul": "nul\x00byte",
    "long": "x" * 10_000,
    "backslash": "back\\slash\\",
    "hash": "# not a comment",
    "html": "</script><script>alert(1)</script>",
    "percent": "%(x)s %s {0}",
    "env": "${HOME}",
    "semicolon": "; rm -rf /",
    "unicode": "🙂 ünïcödé",
}
# Values searched for in the generated files (too short ones, like "#", occur in any file).
MIN_SEARCH = 4
LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


# -- projects ----------------------------------------------------------------------------------


@dataclass
class Case:
    """A project being built: gpux.yml data, the model, and extra files."""

    config: dict[str, Any] = field(
        default_factory=lambda: {"name": "demo", "version": "1.0.0", "model": {"source": "./model.onnx"}}
    )
    model: onnx.ModelProto = field(default_factory=models.mlp)
    model_file: str = "model.onnx"
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True)
        path = folder / self.model_file
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(self.model, path)
        for rel, writer in self.files.items():
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            writer(target)
        text = yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True)
        (folder / "gpux.yml").write_text(text, encoding="utf-8")
        return folder


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a value everywhere in the graph (inputs, outputs, initializers, node edges)."""
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def set_dim_param(model: onnx.ModelProto, value: str) -> None:
    for tensor in [*model.graph.input, *model.graph.output]:
        tensor.type.tensor_type.shape.dim[0].dim_param = value


def file_name(payload: str) -> str:
    """The payload as (part of) a relative path: file names hold no NUL and at most 255 bytes."""
    return payload[:200]


def write_sample(name: str) -> Callable[[Path], None]:
    def writer(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        np.savez(path / "sample.npz", **{name: rng.standard_normal((2, 8)).astype(np.float32)})

    return writer


# -- sources -----------------------------------------------------------------------------------

Getter = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Source:
    """One string source: how the payload is put in, and what must come out.

    ``apply`` puts the payload in (returning the value stored when it had to change it: a file
    name). ``rejected``: payload ids refused at validation (``"all"``: every payload); ``field``
    is what the error message must name. ``manifest``: where an accepted value must appear.
    """

    id: str
    apply: Callable[[Case, str], str | None]
    manifest: tuple[Getter, ...] = ()
    rejected: frozenset[str] | str = frozenset()
    field: str = ""

    def refuses(self, payload_id: str) -> bool:
        return self.rejected == "all" or payload_id in self.rejected


def _cfg(*path: str | int) -> Callable[[Case, str], None]:
    """Set gpux.yml's value at ``path`` (creating mappings on the way)."""

    def apply(case: Case, value: str) -> None:
        node: Any = case.config
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
        node[path[-1]] = value

    return apply


def _at(*path: str | int) -> Getter:
    def get(manifest: dict[str, Any]) -> Any:
        node: Any = manifest
        for part in path:
            node = node[part]
        return node

    return get


def _input_name(case: Case, value: str) -> None:
    rename_tensor(case.model, "x", value)
    case.config["inputs"] = [{"name": value, "type": "float32"}]


def _input_key(case: Case, value: str) -> None:
    rename_tensor(case.model, "x", value)
    case.config["inputs"] = {value: {"type": "float32"}}


def _output_name(case: Case, value: str) -> None:
    rename_tensor(case.model, "probs", value)
    case.config["outputs"] = [{"name": value, "labels": ["a", "b", "c"]}]


def _model_source(case: Case, value: str) -> str:
    if "\x00" not in value:  # a NUL can be written in gpux.yml but not in a file name
        case.model_file = f"m {file_name(value)}.onnx"
        value = case.model_file
    case.config["model"]["source"] = value
    return value


def _build_shapes(case: Case, value: str) -> None:
    rename_tensor(case.model, "x", value)
    case.config["build"] = {"shapes": {value: [2, 8]}}


def _calibration(case: Case, value: str) -> str:
    folder = f"cal {file_name(value)}" if "\x00" not in value else value
    case.files[folder.replace("\x00", "")] = write_sample("x")
    case.config["build"] = {"calibration": {"data": folder}}
    return folder


def _metadata_key(case: Case, value: str) -> None:
    case.config["metadata"] = {value: "v"}


def _unknown_key(case: Case, value: str) -> None:
    case.config[value] = 1


CONFIG_SOURCES = [
    Source("name", _cfg("name"), rejected="all", field="name"),
    Source("version", _cfg("version"), rejected="all", field="version"),
    Source("description", _cfg("description"), (_at("description"), _at("config", "description"))),
    Source("model.source", _model_source, (_at("config", "model", "source"),), frozenset({"nul"}), "model.source"),
    Source("model.version", _cfg("model", "version"), (_at("config", "model", "version"),)),
    Source(
        "inputs[].name",
        _input_name,
        (_at("inputs", 0, "name"), _at("signature", "inputs", 0, "name"), _at("config", "inputs", 0, "name")),
        frozenset({"nul"}),
        "inputs[0].name",
    ),
    Source("inputs.<key>", _input_key, (_at("inputs", 0, "name"),), frozenset({"nul"}), "inputs[0].name"),
    Source("inputs[].description", _cfg("inputs", "x", "description"), (_at("inputs", 0, "description"),)),
    Source(
        "inputs[].shape (symbolic dim)",
        lambda case, value: _cfg("inputs", "x", "shape")(case, [value, 8]),
        (lambda m: m["config"]["inputs"][0]["shape"][0],),
    ),
    Source(
        "outputs[].name",
        _output_name,
        (_at("outputs", 0, "name"), _at("signature", "outputs", 0, "name")),
        frozenset({"nul"}),
        "outputs[0].name",
    ),
    Source("outputs[].description", _cfg("outputs", "probs", "description"), (_at("outputs", 0, "description"),)),
    Source(
        "outputs[].labels",
        lambda case, value: _cfg("outputs", "probs", "labels")(case, ["a", value, "c"]),
        (lambda m: m["outputs"][0]["labels"][1],),
    ),
    Source("metadata value", _cfg("metadata", "k"), (_at("metadata", "k"), _at("config", "metadata", "k"))),
    Source("metadata key", _metadata_key, (lambda m: next(iter(m["metadata"])),)),
    Source(
        "metadata nested",
        lambda case, value: _cfg("metadata", "nested")(case, {"list": [value], "map": {value: value}}),
        (lambda m: m["metadata"]["nested"]["list"][0], lambda m: next(iter(m["metadata"]["nested"]["map"]))),
    ),
    Source("runtime.gpu.memory", _cfg("runtime", "gpu", "memory"), rejected="all", field="runtime.gpu.memory"),
    Source("runtime.gpu.backend", _cfg("runtime", "gpu", "backend"), rejected="all", field="runtime.gpu.backend"),
    Source("serving.host", _cfg("serving", "host"), rejected="all", field="serving.host"),
    Source("inputs[].type", _cfg("inputs", "x", "type"), rejected="all", field="inputs[0].type"),
    Source(
        "preprocessing.tokenizer", _cfg("preprocessing", "tokenizer"), rejected="all", field="preprocessing.tokenizer"
    ),
    Source(
        "build.targets",
        lambda case, value: _cfg("build", "targets")(case, [value]),
        rejected="all",
        field="build.targets",
    ),
    Source("build.precision", _cfg("build", "precision"), rejected="all", field="build.precision"),
    Source(
        "build.shapes key",
        _build_shapes,
        (lambda m: next(iter(m["config"]["build"]["shapes"])),),
        frozenset({"nul"}),
        "build.shapes",
    ),
    Source(
        "build.calibration.data",
        _calibration,
        (_at("config", "build", "calibration", "data"),),
        frozenset({"nul"}),
        "build.calibration.data",
    ),
    Source(
        "build.options key",
        lambda case, value: _cfg("build", "options")(case, {value: {}}),
        rejected="all",
        field="build.options",
    ),
    Source(
        "build.options.openvino.cache_dir",
        _cfg("build", "options", "openvino", "cache_dir"),
        (_at("config", "build", "options", "openvino", "cache_dir"),),
        frozenset({"nul"}),
        "build.options.openvino.cache_dir",
    ),
    Source(
        "build.options.tensorrt.engine_cache_dir",
        _cfg("build", "options", "tensorrt", "engine_cache_dir"),
        (_at("config", "build", "options", "tensorrt", "engine_cache_dir"),),
        frozenset({"nul"}),
        "build.options.tensorrt.engine_cache_dir",
    ),
    Source("unknown key", _unknown_key, rejected="all", field="unknown key"),
]


def _model_attr(attr: str) -> Callable[[Case, str], None]:
    def apply(case: Case, value: str) -> None:
        setattr(case.model, attr, value)

    return apply


def _graph_attr(attr: str) -> Callable[[Case, str], None]:
    def apply(case: Case, value: str) -> None:
        setattr(case.model.graph, attr, value)

    return apply


def _node_attr(attr: str) -> Callable[[Case, str], None]:
    def apply(case: Case, value: str) -> None:
        setattr(case.model.graph.node[0], attr, value)

    return apply


def _metadata_prop(key: bool) -> Callable[[Case, str], None]:
    def apply(case: Case, value: str) -> None:
        onnx.helper.set_model_props(case.model, {value: "v"} if key else {"k": value})

    return apply


def _opset_domain(case: Case, value: str) -> None:
    case.model.opset_import.append(onnx.helper.make_opsetid(value, 1))


def _value_doc(case: Case, value: str) -> None:
    case.model.graph.input[0].doc_string = value


# A NUL in a graph input/output name: zipfile cuts reference entry names at the NUL, so the
# bundle's reference data no longer matches its names and `python <bundle> verify` fails
# (gpuxc/project/model.py should refuse such a name, or bundle.write_npz store it whole).

MODEL_SOURCES = [
    # A NUL would cut the name short in reference/*.npz (zip member names end there): refused.
    Source(
        "graph input name",
        lambda case, value: rename_tensor(case.model, "x", value),
        (_at("signature", "inputs", 0, "name"), _at("inputs", 0, "name")),
        rejected=frozenset({"nul"}),
        field="graph input",
    ),
    Source(
        "graph output name",
        lambda case, value: rename_tensor(case.model, "probs", value),
        (_at("signature", "outputs", 0, "name"), _at("outputs", 0, "name")),
        rejected=frozenset({"nul"}),
        field="graph output",
    ),
    Source(
        "symbolic dim (dim_param)",
        lambda case, value: set_dim_param(case.model, value),
        (_at("signature", "inputs", 0, "shape", 0), _at("outputs", 0, "shape", 0)),
    ),
    Source("producer_name", _model_attr("producer_name"), (lambda m: m["signature"]["producer"].rsplit(" ", 1)[0],)),
    Source(
        "producer_version", _model_attr("producer_version"), (lambda m: m["signature"]["producer"].split(" ", 1)[1],)
    ),  # fmt: skip
    Source("opset domain", _opset_domain, (lambda m: next(d for d in m["signature"]["opsets"] if d),)),
    Source("model doc_string", _model_attr("doc_string")),
    Source("model domain", _model_attr("domain")),
    Source("graph name", _graph_attr("name")),
    Source("graph doc_string", _graph_attr("doc_string")),
    Source("metadata_props key", _metadata_prop(key=True)),
    Source("metadata_props value", _metadata_prop(key=False)),
    Source("node name", _node_attr("name")),
    Source("node doc_string", _node_attr("doc_string")),
    Source("initializer name", lambda case, value: rename_tensor(case.model, "W1", value)),
    Source("intermediate value name", lambda case, value: rename_tensor(case.model, "h", value)),
    Source("graph input doc_string", _value_doc),
]

SOURCES = CONFIG_SOURCES + MODEL_SOURCES


def pairs() -> list[Any]:
    return [pytest.param(s, p, id=f"{s.id}-{p}") for s in SOURCES for p in PAYLOADS]


# -- what a bundle must look like ------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def runner_sources(adapter: str = "onnxruntime/runtime.py") -> dict[str, str]:
    """The runner's source files by path in the bundle: what every bundle's ``.py`` files must be."""
    return {rel: source.read_text(encoding="utf-8") for rel, source in runner_files(adapter).items()}


def assert_runner_is_a_copy(python: dict[str, str]) -> None:
    """Every ``.py`` file of a bundle is its runner source, byte for byte."""
    sources = runner_sources()
    assert python.keys() == sources.keys()
    for rel, text in python.items():
        assert text == sources[rel], f"{rel}: differs from its source {runner_files('onnxruntime/runtime.py')[rel]}"


def dockerfile_shape(text: str) -> list[tuple[str, Any]]:
    """Instructions with their arguments: JSON arrays parsed, shell forms split with shlex."""
    out: list[tuple[str, Any]] = []
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not logical:
            assert not any(b in line for b in LINE_BREAKS[2:]), f"Dockerfile comment with a line break: {line!r}"
            continue
        logical += line
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            keyword, _, args = logical.strip().partition(" ")
            args = args.strip()
            if "[" in args and args.endswith("]"):
                head, _, array = args.partition("[")
                parsed: Any = (shlex.split(head), json.loads("[" + array))
            else:
                parsed = shlex.split(args)
            out.append((keyword.upper(), parsed))
        logical = ""
    return out


def markdown_shape(text: str) -> list[Any]:
    """The README as Markdown sees it: block and inline token types, text contents left out.

    A value that stays literal text adds no emphasis, link, code span, HTML or line of its own.
    """
    if MarkdownIt is None:
        return [text.count("\n")]
    shape: list[Any] = []
    for token in MarkdownIt("commonmark").enable("table").parse(text):
        children = [c.type for c in token.children or [] if c.type != "text"]
        shape.append((token.type, token.tag, token.info, children))
    return shape


def readme_commands(text: str) -> list[list[str]]:
    """Each shell line of the README's ```bash blocks, split with shlex (comments dropped)."""
    commands, in_bash = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if in_bash:
            commands.append(shlex.split(line, comments=True))
    return commands


def requirement_lines(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert all(REQUIREMENT_RE.match(line) for line in lines), lines
    return lines


@dataclass
class Generated:
    python: dict[str, str]
    dockerfile: str
    readme: str
    requirements: str
    manifest_text: str
    inputs_npz: list[str] | None = None  # reference data: only in real bundles
    outputs_npz: list[str] | None = None

    @classmethod
    def of(cls, bundle: Path) -> Generated:
        python = {p.relative_to(bundle).as_posix(): p.read_text(encoding="utf-8") for p in bundle.rglob("*.py")}

        def keys(rel: str) -> list[str]:
            with np.load(bundle / rel, allow_pickle=False) as data:
                return sorted(data.files)

        return cls(
            python=python,
            dockerfile=(bundle / "Dockerfile").read_text(encoding="utf-8"),
            readme=(bundle / "README.md").read_text(encoding="utf-8"),
            requirements=(bundle / "requirements.txt").read_text(encoding="utf-8"),
            manifest_text=(bundle / "gpux-bundle.json").read_text(encoding="utf-8"),
            inputs_npz=keys("reference/inputs.npz"),
            outputs_npz=keys("reference/outputs.npz"),
        )


def assert_same_structure(got: Generated, benign: Generated, value: str) -> dict[str, Any]:
    """The checks every accepted value must pass; returns the parsed manifest."""
    assert_runner_is_a_copy(got.python)
    assert got.python == benign.python
    assert dockerfile_shape(got.dockerfile) == dockerfile_shape(benign.dockerfile)
    assert got.readme.count("\n") == benign.readme.count("\n")
    assert markdown_shape(got.readme) == markdown_shape(benign.readme)
    assert readme_commands(got.readme) == readme_commands(benign.readme)
    assert requirement_lines(got.requirements) == requirement_lines(benign.requirements)
    if len(value.strip()) >= MIN_SEARCH:
        for name, text in (("Dockerfile", got.dockerfile), ("README.md", got.readme),
                           ("requirements.txt", got.requirements)):  # fmt: skip
            assert value not in text, f"{name} holds the value"
    manifest = json.loads(got.manifest_text)  # valid JSON (NaN/Infinity would already fail here: strict below)
    json.loads(got.manifest_text, parse_constant=_no_constant)
    if got.inputs_npz is not None:
        names_in = sorted(t["name"] for t in manifest["inputs"])
        names_out = sorted(t["name"] for t in manifest["outputs"])
        assert got.inputs_npz == names_in, "reference inputs are not stored under the input names"
        assert got.outputs_npz == names_out, "reference outputs are not stored under the output names"
    return manifest


def _no_constant(name: str) -> Any:
    raise AssertionError(f"manifest holds {name}, which is not JSON")


# -- the fuzz ----------------------------------------------------------------------------------------
#
# The bulk stops short of the target compile (passes, artifact, verification: tens of ms per build
# that no string of the project reaches): gpux.yml is validated and the model loaded and checked by
# the real functions, the runner written from the template context compile_target builds (mirrored
# in runner_context; test_runner_context_is_the_one_compile_target_builds checks the mirror against
# a real build), and the manifest written by the pipeline's own assemble_manifest. The end-to-end tests
# below compile for real.


def runner_context(config: GpuxConfig, target: Target, runtime: RuntimeSpec) -> dict[str, Any]:
    """The template context of pipeline.compile_target, for a build that passed verification."""
    return {
        "gpuxc_version": __version__,
        "target": target.name,
        "name": config.name,
        "version": config.version,
        "verification_status": "passed",
        "verification_reason": None,
        "requirements": runtime.requirements,
        "serve_requirements": serve_requirements(),
        "preprocessing": None,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "port": config.serving.port,
        "image": f"{config.name}-{target.name}",
    }


@functools.lru_cache(maxsize=1)
def serve_requirements() -> tuple[str, ...]:
    return tuple(pinned(SERVE_DISTS))


@functools.lru_cache(maxsize=8)
def render_runner(context_json: str, adapter: str) -> dict[str, str]:
    """What bundle.write_runner writes, by path in the bundle: the runner sources copied and the
    rendered files (rendering is a pure function of the context, so equal contexts are rendered
    once)."""
    context = json.loads(context_json)
    files = {rel: source.read_text(encoding="utf-8") for rel, source in runner_files(adapter).items()}
    files.update({rel: render(template, context) for template, rel in RENDERED_FILES.items()})
    return files


def generate(case: Case, folder: Path) -> tuple[Generated, dict[str, Any]]:
    """Validate, load, check, write the runner and the manifest as a cpu build would; returns the
    generated files and the template context."""
    project = case.write(folder)
    config = load_config(project / "gpux.yml")
    loaded = load_model(config.model_path)
    check_signature(config, loaded.signature)
    resolve_preprocessing(config, loaded.signature)
    target = get_registry().targets["cpu"]()
    options = target.Options.model_validate(config.build.options.get("cpu", {}))
    artifact = Artifact(entry="model/model.onnx", format="onnx")
    runtime = target.runtime(options, artifact)
    context = runner_context(config, target, runtime)
    context["serve_requirements"] = list(context["serve_requirements"])
    files = render_runner(json.dumps(context, sort_keys=True), runtime.adapter)
    build_info = BuildInfo(precision="fp32", optimization_level=None, target_options={}, passes=[])
    verification = Verification(status="passed", tolerance={"atol": 1e-5})
    project_ = Project(config, loaded, {}, {}, "generated")
    stage = folder / "stage"
    stage.mkdir()
    manifest = assemble_manifest(project_, target, build_info, artifact, runtime, verification, loaded.proto, stage)
    generated = Generated(
        python={rel: text for rel, text in files.items() if rel.endswith(".py")},
        dockerfile=files["Dockerfile"],
        readme=files["README.md"],
        requirements=files["requirements.txt"],
        manifest_text=manifest.to_json(),
    )
    return generated, context


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Path]]:
    """Fresh folders for the bulk, removed after each use (a pytest tmp_path per pair adds up)."""
    root = tmp_path_factory.mktemp("fuzz")
    counter = itertools.count()
    yield lambda: root / f"case{next(counter)}"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def benign(workdir: Callable[[], Path]) -> tuple[Generated, dict[str, Any]]:
    return generate(Case(), workdir())


def assert_one_line_config_error(exc: BaseException, field_name: str) -> None:
    """A gpux.yml value refused: ConfigError at file:line:col; a model string: ModelError naming it."""
    message = str(exc)
    assert isinstance(exc, (ConfigError, ModelError)), f"{type(exc).__name__}: {message}"
    assert len(message.splitlines()) == 1 and "\x00" not in message, f"not one line: {message!r}"
    assert len(message) < 600, f"message of {len(message)} characters"
    if isinstance(exc, ConfigError):
        assert re.match(r"^\S*gpux\.yml:\d+:\d+: ", message), message
    assert field_name in message, f"{field_name!r} not named in {message!r}"


@pytest.mark.parametrize(("source", "payload_id"), pairs())
def test_payload(source: Source, payload_id: str, benign: tuple[Generated, dict[str, Any]],
                 workdir: Callable[[], Path], monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    folder = workdir()
    folder.mkdir()
    monkeypatch.chdir(folder)  # a payload that ran would leave pwned-* here
    value = PAYLOADS[payload_id]
    case = Case()
    stored = source.apply(case, value) or value
    try:
        if source.refuses(payload_id):
            with pytest.raises(GpuxcError) as caught:
                generate(case, folder / "project")
            assert_one_line_config_error(caught.value, source.field)
            return
        generated, context = generate(case, folder / "project")
        assert context == benign[1], "a project string reached the template context"
        manifest = assert_same_structure(generated, benign[0], value)
        for get in source.manifest:
            assert get(manifest) == stored
        if not source.manifest and len(value.strip()) >= MIN_SEARCH:
            # Model strings that reach no generated file: not in the manifest either.
            assert value not in repr(manifest)
    finally:
        assert not list(folder.rglob("pwned*")), "a payload was executed"
        monkeypatch.undo()
        shutil.rmtree(folder)


def test_every_source_is_in_the_doc() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "codegen-safety.md").read_text(encoding="utf-8")
    missing = [s.id for s in SOURCES if f"`{s.id}`" not in doc]
    assert not missing, f"docs/codegen-safety.md does not list {missing}"


# -- real compiles -------------------------------------------------------------------------------------


def build(case: Case, root: Path) -> Path:
    project = case.write(root / "project")
    [result] = compile_project(project, ["cpu"], root / "dist", use_cache=False)
    return result.path


@pytest.fixture(scope="module")
def benign_bundle(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return Generated.of(build(Case(), tmp_path_factory.mktemp("benign")))


@contextlib.contextmanager
def capture_context(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The context compile_target hands to bundle.write_runner."""
    captured: dict[str, Any] = {}
    write_runner = bundle_mod.write_runner

    def spy(stage: Path, context: dict[str, Any], adapter: str, extra: tuple[Path, ...] = ()) -> None:
        captured.update(context)
        write_runner(stage, context, adapter, extra)

    monkeypatch.setattr(bundle_mod, "write_runner", spy)
    yield captured


def mirrored_context(bundle: Path) -> dict[str, Any]:
    config = load_config(bundle.parent.parent / "project" / "gpux.yml")
    target = get_registry().targets["cpu"]()
    runtime = target.runtime(target.Options(), Artifact(entry="model/model.onnx", format="onnx"))
    context = runner_context(config, target, runtime)
    context["serve_requirements"] = list(context["serve_requirements"])
    return context


def test_runner_context_is_the_one_compile_target_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with capture_context(monkeypatch) as captured:
        bundle = build(Case(), tmp_path)
    assert captured == mirrored_context(bundle), "compile_target's context changed: update runner_context()"
    generated = Generated.of(bundle)
    rendered, _ = generate(Case(), tmp_path / "mirror")
    assert {rel: text for rel, text in generated.python.items() if rel in rendered.python} == rendered.python
    assert (generated.dockerfile, generated.readme, generated.requirements) == (
        rendered.dockerfile, rendered.readme, rendered.requirements)  # fmt: skip


@pytest.mark.parametrize(
    "payload_id",
    list(PAYLOADS),
)
def test_compiled_tensor_names(payload_id: str, benign_bundle: Generated, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Graph input and output names reach the most places (manifest, reference data, the runner's
    requests): a real cpu build with the payload in both, checked like the bulk, and its reference
    data stored under exactly those names."""
    monkeypatch.chdir(tmp_path)
    value = PAYLOADS[payload_id]
    case = Case()
    rename_tensor(case.model, "x", f"in {value}")
    rename_tensor(case.model, "probs", f"out {value}")
    try:
        bundle = build(case, tmp_path)
    except GpuxcError as exc:  # refusing a hostile model is fine, with one line naming the tensor
        assert len(str(exc).splitlines()) == 1 and "\x00" not in str(exc), repr(str(exc))
        return
    generated = Generated.of(bundle)
    manifest = assert_same_structure(generated, benign_bundle, value)
    assert [t["name"] for t in manifest["inputs"]] == [f"in {value}"]
    assert [t["name"] for t in manifest["outputs"]] == [f"out {value}"]
    assert not list(tmp_path.rglob("pwned*"))


# -- the kitchen sink: every payload everywhere at once, and the runner executed ------------------------

MARKER = "pwned"
SINK = "".join(
    [
        '"""; open("pwned-py1", "w"); """',
        "'''; open('pwned-py2', 'w'); '''",
        "\nimport os; os.system('touch pwned-py3')\n",
        "\"+__import__('os').system('touch pwned-py4')+\"",
        "$(touch pwned-sh1)",
        "`touch pwned-sh2`",
        "; touch pwned-sh3 #",
        "{{ cycler.__init__.__globals__.os.system('touch pwned-j1') }}",
        "{% set x = cycler.__init__.__globals__.os.popen('touch pwned-j2').read() %}",
        "\r\u2028\u2029\\ # %(x)s ${HOME} </script><script>alert(1)</script>",
    ]
)
# A file or folder name: no "/" and no NUL; the shell and Python payloads still apply.
SINK_FILE = "m $(touch pwned-f1) `touch pwned-f2` '\"; {{ 7 * 7 }} \u2028"


def kitchen_sink() -> tuple[Case, dict[str, str]]:
    """Every model string source and every accepted gpux.yml string carrying payloads."""
    names = {"in": f"in {SINK}", "out": f"out {SINK}", "dim": f"batch {SINK}"}
    case = Case()
    model = case.model
    rename_tensor(model, "x", names["in"])
    rename_tensor(model, "probs", names["out"])
    rename_tensor(model, "W1", f"W1 {SINK}")
    rename_tensor(model, "h", f"h {SINK}")
    set_dim_param(model, names["dim"])
    model.producer_name = f"producer {SINK}"
    model.producer_version = f"version {SINK}"
    model.doc_string = f"doc {SINK}"
    model.domain = f"domain {SINK}"
    model.graph.name = f"graph {SINK}"
    model.graph.doc_string = f"graph doc {SINK}"
    model.graph.input[0].doc_string = f"input doc {SINK}"
    for i, node in enumerate(model.graph.node):
        node.name = f"node{i} {SINK}"
        node.doc_string = f"node doc {SINK}"
    onnx.helper.set_model_props(model, {f"key {SINK}": f"value {SINK}"})
    model.opset_import.append(onnx.helper.make_opsetid(f"domain {SINK}", 1))
    case.model_file = f"{SINK_FILE}.onnx"
    calibration = f"cal {SINK_FILE}"
    case.files[calibration] = write_sample(names["in"])
    case.config = {
        "name": "sink",
        "version": "1.0.0",
        "description": f"description {SINK}",
        "model": {"source": f"./{case.model_file}", "version": f"v {SINK}"},
        "inputs": {names["in"]: {"type": "float32", "shape": [f"n {SINK}", 8], "description": f"in desc {SINK}"}},
        "outputs": [{"name": names["out"], "description": f"out desc {SINK}", "labels": [SINK, f"b {SINK}", "c"]}],
        "metadata": {f"meta {SINK}": {"list": [SINK, 1, None], "map": {SINK: SINK}}},
        "build": {
            "calibration": {"data": calibration},
            "shapes": {names["in"]: [2, 8]},
            "options": {"openvino": {"cache_dir": f"ov {SINK}"}, "tensorrt": {"engine_cache_dir": f"trt {SINK}"}},
        },
    }
    return case, names


def test_kitchen_sink_compiles_and_runs_without_executing_anything(
    benign_bundle: Generated, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    monkeypatch.chdir(sandbox)
    case, names = kitchen_sink()
    with capture_context(monkeypatch) as captured:
        bundle = build(case, tmp_path)
    got = Generated.of(bundle)
    manifest = assert_same_structure(got, benign_bundle, SINK)
    assert manifest["description"] == case.config["description"]
    assert manifest["metadata"] == case.config["metadata"]
    assert manifest["outputs"][0]["labels"] == case.config["outputs"][0]["labels"]
    assert manifest["signature"]["producer"] == f"{case.model.producer_name} {case.model.producer_version}"
    assert manifest["reference"]["origin"] == "calibration"
    # No string of the project reached the template context: only checked words and numbers.
    assert captured == mirrored_context(bundle)
    assert not any(MARKER in str(v) for v in captured.values())

    # The runner, executed: info, run (hostile input name in the request), verify.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(sandbox), "PYTHONDONTWRITEBYTECODE": "1"}
    info = subprocess.run([sys.executable, str(bundle), "info"], cwd=sandbox, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["description"] == case.config["description"]
    assert [t["name"] for t in described["inputs"]] == [names["in"]]
    assert described["outputs"][0]["labels"] == case.config["outputs"][0]["labels"]
    request = sandbox / "request.json"
    request.write_text(json.dumps({names["in"]: np.ones((2, 8)).tolist()}), encoding="utf-8")
    run = subprocess.run([sys.executable, str(bundle), "run", "--input", f"@{request}"], cwd=sandbox, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    ran = json.loads(run.stdout)
    assert list(ran) == [names["out"], "ranked"]  # the labelled output's ranking: hostile labels as plain data
    assert {e["label"] for e in ran["ranked"][names["out"]][0]} == {SINK, f"b {SINK}", "c"}
    verify = subprocess.run([sys.executable, str(bundle), "verify"], cwd=sandbox, env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr

    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint:
        done = subprocess.run([hadolint, "--no-color", str(bundle / "Dockerfile")], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    # gpuxc init on the hostile model writes a gpux.yml that reads back with the same names.
    written = yaml.safe_dump(config_for(bundle.parent.parent / "project" / case.model_file), allow_unicode=True)
    (sandbox / "gpux.yml").write_text(written, encoding="utf-8")
    reread = load_config(sandbox / "gpux.yml")
    assert [t.name for t in reread.inputs] == [names["in"]] and [t.name for t in reread.outputs] == [names["out"]]

    assert not [p for p in tmp_path.rglob(f"{MARKER}*") if p.name.startswith(MARKER)], "a payload was executed"
    assert not list(Path.home().glob(f"{MARKER}-*"))


def test_a_refused_value_is_one_line_from_the_cli_and_no_traceback(tmp_path: Path) -> None:
    case = Case()
    case.config["serving"] = {"host": "$(touch pwned-cli)\nwhoami"}
    project = case.write(tmp_path / "project")
    done = subprocess.run([sys.executable, "-m", "gpuxc", "compile", str(project), "--out", str(tmp_path / "dist")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.strip()]
    assert "serving.host" in line and "gpux.yml:" in line
    assert not list(tmp_path.rglob("pwned*"))


# -- templates: the context itself fuzzed, and every placeholder filtered ---------------------------------


def template_context() -> dict[str, Any]:
    """A context shaped like compile_target's (test_template_context_keys checks the real one's keys)."""
    return {
        "gpuxc_version": "0.1.0",
        "target": "cpu",
        "name": "demo",
        "version": "1.0.0",
        "verification_status": "passed",
        "verification_reason": None,
        "requirements": ["onnxruntime==1.20.0", "numpy==2.1.0"],
        "serve_requirements": ["fastapi==0.110.0", "uvicorn==0.29.0"],
        "preprocessing": None,
        "python": "3.11",
        "port": 8080,
        "image": "demo-cpu",
    }


def all_templates() -> list[str]:
    root = template_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.j2"))


def rendered(context: dict[str, Any]) -> dict[str, str]:
    return {t: render(t, context) for t in all_templates()}


@functools.lru_cache(maxsize=1)
def benign_render() -> dict[str, str]:
    return rendered(template_context())


STRING_KEYS = [k for k, v in template_context().items() if isinstance(v, str) or v is None]


@pytest.mark.parametrize("key", STRING_KEYS + ["requirements", "serve_requirements"])
@pytest.mark.parametrize("payload_id", list(PAYLOADS))
def test_template_context_fuzz(key: str, payload_id: str) -> None:
    """Defence in depth: a payload placed straight into the template context (bypassing
    validation) is refused by a filter or stays literal in every template."""
    value = PAYLOADS[payload_id]
    context = template_context()
    context[key] = [value, *context[key][1:]] if isinstance(context[key], list) else value
    try:
        files = rendered(context)
    except GpuxcError as exc:
        assert str(exc).startswith("internal: "), str(exc)  # a filter refused it: fine
        return
    benign_files = benign_render()
    for template, text in files.items():
        if template.endswith("Dockerfile.j2"):
            assert dockerfile_shape(text) == dockerfile_shape(benign_files[template])
        elif template.endswith("README.md.j2"):
            assert text.count("\n") == benign_files[template].count("\n")
            assert not any(b in text for b in LINE_BREAKS[2:])
            assert markdown_shape(text) == markdown_shape(benign_files[template])
            assert readme_commands(text) == readme_commands(benign_files[template])
        elif template.endswith("requirements.txt.j2"):
            assert len(requirement_lines(text)) == len(requirement_lines(benign_files[template]))


# Filters whose output is safe where they are used, by kind of generated file.
SAFE_FILTERS = {
    ".py.j2": {"py_literal", "py_ident", "doc_text"},  # a third party's adapter template
    "Dockerfile.j2": {"docker_word", "int", "text_line"},
    "README.md.j2": {"md_text", "md_code"},
    "requirements.txt.j2": {"requirement", "text_line"},
}


def _outputs(node: jinja2.nodes.Node) -> list[jinja2.nodes.Expr]:
    found = []
    for output in node.find_all(jinja2.nodes.Output):
        found.extend(n for n in output.nodes if not isinstance(n, jinja2.nodes.TemplateData))
    return found


@pytest.mark.parametrize("template", all_templates())
def test_every_placeholder_ends_in_a_safe_filter(template: str) -> None:
    env = environment()
    source = (template_root() / template).read_text(encoding="utf-8")
    safe = next(v for k, v in SAFE_FILTERS.items() if template.endswith(k))
    for expr in _outputs(env.parse(source)):
        assert isinstance(expr, jinja2.nodes.Filter) and expr.name in safe, (
            f"{template}: '{{{{ ... }}}}' at line {expr.lineno} is not passed through one of {sorted(safe)}"
        )


def test_template_context_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with capture_context(monkeypatch) as captured:
        build(Case(), tmp_path)
    assert set(captured) == set(template_context()), "compile_target's context changed: update template_context()"


def test_the_templates_are_the_rendered_files() -> None:
    # Everything else gpuxc writes into a bundle is copied: no template, no placeholder.
    assert set(all_templates()) == set(RENDERED_FILES)


@pytest.mark.parametrize("payload_id", list(PAYLOADS))
def test_runner_is_copied_whatever_the_context(payload_id: str, tmp_path: Path) -> None:
    """write_runner with a payload in every string of the template context: the runner files are
    their sources byte for byte (only the rendered files may hold context values)."""
    context = {k: PAYLOADS[payload_id] if isinstance(v, str) else v for k, v in template_context().items()}
    try:
        bundle_mod.write_runner(tmp_path, context, "onnxruntime/runtime.py")
    except GpuxcError as exc:
        assert str(exc).startswith("internal: "), str(exc)  # a rendered file's filter refused it: fine
    python = {p.relative_to(tmp_path).as_posix(): p.read_text(encoding="utf-8") for p in tmp_path.rglob("*.py")}
    assert_runner_is_a_copy(python)
