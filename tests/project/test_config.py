"""gpux.yml parsing: the schema, and errors that name file:line:column precisely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from gpuxc.errors import ConfigError
from gpuxc.project import yamlsource
from gpuxc.project.config import GpuSection
from gpuxc.project.config_load import find_config, load_config

FULL_MAPPING_FORM = """\
name: image-classifier
version: 2.1.0
description: a classifier
model:
  source: ./model.onnx
  format: onnx
  version: v3
inputs:
  image:
    type: float32
    shape: [1, 3, 64, 64]
    description: RGB image
  mask:
    type: bool
    shape: [1, -1]
outputs:
  probs:
    type: float32
    shape: [1, 5]
    labels: [cat, dog, bird, fish, frog]
runtime:
  gpu:
    memory: 512MB
    backend: cuda
  batch_size: 2
  timeout: 10
  enable_profiling: true
serving:
  host: 0.0.0.0
  port: 9000
  timeout: 2.5
  max_workers: 4
metadata:
  author: someone
  tags: [a, b]
build:
  targets: [cpu]
  optimization_level: basic
  shapes:
    mask: [1, 7]
  seed: 3
  tolerance:
    atol: 0.001
    min_cosine: 0.99
"""

FULL_LIST_FORM = FULL_MAPPING_FORM.replace(
    """\
inputs:
  image:
    type: float32
    shape: [1, 3, 64, 64]
    description: RGB image
  mask:
    type: bool
    shape: [1, -1]
outputs:
  probs:
    type: float32
""",
    """\
inputs:
  - name: image
    type: float32
    shape: [1, 3, 64, 64]
    description: RGB image
  - name: mask
    type: bool
    shape: [1, -1]
outputs:
  - name: probs
    type: float32
""",
)

assert FULL_LIST_FORM.count("- name:") == 3  # the replacement above really happened

MINIMAL = "name: demo\nmodel:\n  source: ./model.onnx\n"


def write(folder: Path, text: str, name: str = "gpux.yml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(folder: Path, text: str) -> str:
    path = write(folder, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


# -- valid configs ---------------------------------------------------------------------------


def test_full_config_parses_every_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_MAPPING_FORM))
    assert cfg.name == "image-classifier"
    assert cfg.version == "2.1.0"
    assert cfg.model.source == "./model.onnx" and cfg.model.version == "v3"
    assert [t.name for t in cfg.inputs] == ["image", "mask"]
    assert cfg.inputs[0].shape == [1, 3, 64, 64] and cfg.inputs[0].type == "float32"
    assert cfg.inputs[1].shape == [1, -1] and cfg.inputs[1].type == "bool"
    assert cfg.outputs[0].labels == ["cat", "dog", "bird", "fish", "frog"]
    assert cfg.runtime.gpu.backend == "cuda" and cfg.runtime.batch_size == 2
    assert cfg.runtime.enable_profiling is True
    assert cfg.serving.host == "0.0.0.0" and cfg.serving.port == 9000 and cfg.serving.max_workers == 4
    assert cfg.metadata == {"author": "someone", "tags": ["a", "b"]}
    assert cfg.build.optimization_level == "basic" and cfg.build.seed == 3
    assert cfg.build.shapes == {"mask": [1, 7]}
    assert cfg.build.tolerance.atol == 0.001 and cfg.build.tolerance.rtol is None
    assert cfg.path == (tmp_path / "gpux.yml").resolve()
    assert cfg.model_path == (tmp_path / "model.onnx").resolve()


def test_mapping_and_list_forms_normalise_to_the_same_tensor_list(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    by_mapping = load_config(write(tmp_path / "a", FULL_MAPPING_FORM))
    by_list = load_config(write(tmp_path / "b", FULL_LIST_FORM))
    assert by_mapping.inputs == by_list.inputs
    assert by_mapping.outputs == by_list.outputs
    assert by_mapping.canonical() == by_list.canonical()


def test_mapping_form_errors_still_point_into_the_file(in_tmp: Path) -> None:
    # The mapping form is rewritten into a list; positions must move with the values.
    text = MINIMAL + 'inputs:\n  x:\n    type: float32\n  y:\n    shape: [1, "two", true]\n'
    message = error_of(in_tmp, text)
    assert message.startswith("gpux.yml:8:23: inputs[1].shape[2]: "), message
    assert "more problem" not in message  # int and str failing for one value is one problem


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.version == "1.0.0"
    assert cfg.inputs == [] and cfg.outputs == []
    assert cfg.build.targets == ["cpu"]
    assert cfg.serving.host == "127.0.0.1"


def test_yaml_float_version_becomes_the_string_the_user_wrote(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "name: a\nversion: 1.0\nmodel:\n  source: m.onnx\n  version: 2.5\n"))
    assert cfg.version == "1.0"
    assert cfg.model.version == "2.5"


def test_memory_sizes_parse_to_bytes() -> None:
    assert GpuSection(memory="2GB").memory_bytes == 2 * 10**9
    assert GpuSection(memory="2GiB").memory_bytes == 2 * 2**30
    assert GpuSection(memory="512 mb").memory_bytes == 512 * 10**6
    assert GpuSection(memory="1073741824").memory_bytes == 1073741824
    assert GpuSection().memory_bytes is None


@pytest.mark.parametrize("text", ["2G", "2Gi", "2iB", "GB", "2 GBs", "-1GB"])
def test_memory_units_end_in_b_as_gpux_yml_always_required(text: str) -> None:
    # gpuxc.sizes reads "2G" for $GPUXC_MODEL_MEMORY_LIMIT; gpux.yml keeps its own, stricter spelling.
    with pytest.raises(ValidationError, match="is not a memory size"):
        GpuSection(memory=text)


def test_memory_from_file_is_reachable_as_bytes(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "runtime:\n  gpu:\n    memory: 2GB\n"))
    assert cfg.runtime.gpu.memory_bytes == 2 * 10**9


def test_dtype_alias_is_normalised(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "inputs:\n  x:\n    type: float\n  y:\n    type: long\n"))
    assert [t.type for t in cfg.inputs] == ["float32", "int64"]


# -- errors with exact positions -------------------------------------------------------------


def test_unknown_top_level_key_with_did_you_mean(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "servng:\n  port: 1\n")
    assert message.startswith("gpux.yml:4:1: "), message
    assert "unknown key 'servng'" in message and "did you mean 'serving'?" in message


def test_unknown_nested_key_with_did_you_mean(in_tmp: Path) -> None:
    message = error_of(in_tmp, "name: a\nmodel:\n  sourc: m.onnx\n")
    assert message.startswith("gpux.yml:3:3: "), message
    assert "unknown key 'sourc' in model" in message and "did you mean 'source'?" in message


def test_port_given_as_string_is_a_type_error(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + 'serving:\n  port: "8080"\n')
    assert message.startswith("gpux.yml:5:9: serving.port: "), message
    assert "integer" in message and "'8080'" in message


def test_batch_size_given_as_string_is_a_type_error(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + 'runtime:\n  batch_size: "4"\n')
    assert message.startswith("gpux.yml:5:15: runtime.batch_size: "), message
    assert "integer" in message


def test_malformed_yaml_unclosed_bracket(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "inputs: [a, b\noutputs: [c]\n")
    # The parser notices at the ':' of line 5; the message also names where the list opened.
    assert message.startswith("gpux.yml:5:8: invalid YAML: "), message
    assert "started at 4:9" in message


def test_duplicate_key(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "name: b\n")
    assert message.startswith("gpux.yml:4:1: duplicate key 'name'"), message


def test_duplicate_tensor_in_mapping_form_is_a_duplicate_key(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "inputs:\n  x: {}\n  x: {}\n")
    assert message.startswith("gpux.yml:6:3: duplicate key 'x'"), message


def test_tensor_name_given_twice_in_list_form(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "inputs:\n  - name: x\n  - name: y\n  - name: x\n")
    assert message.startswith("gpux.yml:7:11: "), message
    assert "inputs declares 'x' twice" in message


def test_name_key_inside_mapping_form_is_refused(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "inputs:\n  x:\n    name: y\n")
    assert message.startswith("gpux.yml:6:5: "), message


def test_unknown_dtype_with_did_you_mean(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "inputs:\n  x:\n    type: flaot32\n")
    assert message.startswith("gpux.yml:6:11: inputs[0].type: "), message
    assert "unknown type 'flaot32'" in message and "did you mean 'float32'?" in message


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(in_tmp: Path, text: str) -> None:
    message = error_of(in_tmp, text)
    assert message.startswith("gpux.yml:1:1: "), message
    assert "empty" in message


def test_top_level_list(in_tmp: Path) -> None:
    message = error_of(in_tmp, "- name: a\n- model: b\n")
    assert message.startswith("gpux.yml:1:1: "), message
    assert "expected a mapping at the top level, got a list" in message


def test_missing_model_section(in_tmp: Path) -> None:
    message = error_of(in_tmp, "name: a\n")
    assert "missing required key 'model'" in message
    assert message.startswith("gpux.yml:1:1: "), message


def test_preprocessing_block_is_read(in_tmp: Path) -> None:
    # GPUX's fields are acted on (issue 14); tests/project/test_preprocessing.py has every error.
    image = load_config(write(in_tmp, MINIMAL + "preprocessing:\n  resize: [224, 224]\n  normalize: imagenet\n"))
    assert image.preprocessing.kind == "image" and image.preprocessing.resize == [224, 224]
    text = load_config(write(in_tmp, MINIMAL + "preprocessing:\n  tokenizer: tokenizer.json\n  max_length: 128\n"))
    assert text.preprocessing.kind == "text" and text.preprocessing.max_length == 128


def test_a_preprocessing_field_without_its_kind_is_refused_at_that_field(in_tmp: Path) -> None:
    # An unset tokenizer makes max_length meaningless: the error names max_length, not the section.
    message = error_of(in_tmp, MINIMAL + "preprocessing:\n  tokenizer: null\n  max_length: 128\n")
    assert message.startswith("gpux.yml:6:15: preprocessing.max_length: only for text"), message


def test_serving_batch_size_is_the_dynamic_batching_limit(tmp_path: Path) -> None:
    serving = load_config(write(tmp_path, MINIMAL + "serving:\n  batch_size: 8\n")).serving
    assert serving.batch_limit == 8
    serving = load_config(write(tmp_path, MINIMAL + "serving:\n  batch_size: 8\n  max_batch_size: 16\n")).serving
    assert serving.batch_limit == 16


def test_serving_batch_size_of_one_is_accepted(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL + "serving:\n  batch_size: 1\n")).serving.batch_size == 1


def test_every_precision_is_accepted_and_a_typo_is_not(in_tmp: Path) -> None:
    for precision in ("fp32", "fp16", "int8-dynamic", "int8-static", "auto"):
        config = load_config(write(in_tmp, MINIMAL + f"build:\n  precision: {precision}\n"))
        assert config.build.precision == precision
    message = error_of(in_tmp, MINIMAL + "build:\n  precision: int4\n")
    assert message.startswith("gpux.yml:5:14: build.precision: "), message


def test_calibration_needs_data_or_an_explicit_random(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "build:\n  calibration:\n    samples: 8\n")
    assert message.startswith("gpux.yml:6:5: build.calibration: "), message
    assert "random: true" in message
    config = load_config(write(in_tmp, MINIMAL + "build:\n  calibration:\n    random: true\n"))
    assert config.build.calibration is not None and config.build.calibration.random


def test_required_false_is_not_supported_yet(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "inputs:\n  x:\n    required: false\n")
    assert message.startswith("gpux.yml:6:15: inputs[0].required: "), message
    assert "not supported yet" in message


@pytest.mark.parametrize("url", ["https://example.com/m.onnx", "s3://bucket/m.onnx", "file:///etc/passwd"])
def test_url_model_source_is_not_supported_yet(in_tmp: Path, url: str) -> None:
    message = error_of(in_tmp, f"name: a\nmodel:\n  source: {url}\n")
    assert message.startswith("gpux.yml:3:11: model.source: "), message
    assert "not supported yet" in message


@pytest.mark.parametrize("name", ["a/b", "../x", "-lead", "a b"])
def test_invalid_name_is_refused(in_tmp: Path, name: str) -> None:
    message = error_of(in_tmp, f"name: '{name}'\nmodel:\n  source: m.onnx\n")
    assert message.startswith("gpux.yml:1:7: name: "), message
    assert "not a valid name" in message


def test_unparsable_memory_size(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "runtime:\n  gpu:\n    memory: 2 lightyears\n")
    assert message.startswith("gpux.yml:6:13: runtime.gpu.memory: "), message
    assert "'2 lightyears'" in message


def test_unknown_backend_is_a_literal_error(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "runtime:\n  gpu:\n    backend: vulkan\n")
    assert message.startswith("gpux.yml:6:14: runtime.gpu.backend: "), message


def test_error_names_the_file_relative_to_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "proj").mkdir()
    path = write(tmp_path / "proj", "name: a\nmodel:\n  sourc: m.onnx\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"proj{os.sep}gpux.yml:3:3: ")


# -- hostile YAML ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # a tagged sequence where a string is expected
        "name: a\nmodel:\n  source: !!python/object/apply:os.system ['touch {marker}']\n",
        # a tagged sequence where any plain data would be accepted
        MINIMAL + "metadata:\n  x: !!python/object/apply:os.system ['touch {marker}']\n",
        # a tagged mapping
        "name: a\nmodel: !!python/object/new:os.system {{args: ['touch {marker}']}}\n",
        # a tagged scalar
        MINIMAL + "metadata:\n  x: !!python/name:os.system\n",
    ],
)
def test_python_tags_are_refused_and_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    marker = tmp_path / "executed"
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args) or 0)
    path = write(tmp_path, text.format(marker=marker))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "gpux.yml:" in str(info.value)
    assert calls == []
    assert not marker.exists()


def test_unsupported_tag_names_the_tag_and_its_position(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "metadata:\n  x: !!python/object/apply:os.system ['true']\n")
    assert message.startswith("gpux.yml:5:6: "), message
    assert "python/object/apply:os.system" in message


BILLION_LAUGHS = """\
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 10**9 values if expanded; the builder must stop at its limit, not walk them all.
    visits = {"n": 0}
    original = yamlsource._Builder.build

    def counting(self, node, path):  # type: ignore[no-untyped-def]
        visits["n"] += 1
        return original(self, node, path)

    monkeypatch.setattr(yamlsource._Builder, "build", counting)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BILLION_LAUGHS))
    assert "anchors/aliases" in str(info.value)
    assert visits["n"] <= yamlsource.MAX_VALUES + 1


def test_small_aliases_are_still_allowed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "metadata:\n  a: &x [1, 2]\n  b: *x\n"))
    assert cfg.metadata == {"a": [1, 2], "b": [1, 2]}


def test_self_referencing_alias_is_refused(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "metadata:\n  x: &a [*a]\n")
    assert message.startswith("gpux.yml:"), message
    assert "nests deeper" in message


def test_deep_nesting_is_refused(in_tmp: Path) -> None:
    depth = yamlsource.MAX_DEPTH + 10
    message = error_of(in_tmp, MINIMAL + "metadata:\n  x: " + "[" * depth + "]" * depth + "\n")
    assert "nests deeper" in message


def test_merge_keys_are_refused(in_tmp: Path) -> None:
    message = error_of(in_tmp, MINIMAL + "base: &b {port: 1}\nserving:\n  <<: *b\n")
    assert message.startswith("gpux.yml:6:3: "), message
    assert "merge keys" in message


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "gpux.yml"
    path.write_bytes(b"name: \xff\xfe\nmodel:\n  source: m.onnx\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# -- finding the config ----------------------------------------------------------------------


def test_find_config_without_gpux_yml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_config(tmp_path)
    assert "no gpux.yml here" in str(info.value)
    assert "gpuxc init" in str(info.value)


def test_find_config_on_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or directory"):
        find_config(tmp_path / "nope")


def test_find_config_accepts_gpux_yaml_and_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, name="gpux.yaml")
    assert find_config(tmp_path) == path
    assert find_config(path) == path


def test_find_config_prefers_an_explicit_config(tmp_path: Path) -> None:
    other = write(tmp_path, MINIMAL, name="other.yml")
    write(tmp_path, MINIMAL)
    assert find_config(tmp_path, other) == other


def test_load_config_on_a_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
