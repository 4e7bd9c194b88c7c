"""The smallest inputs behind what tests/fuzz found, one test each: every one must compile or
fail with a GpuxcError whose message is one line (never another exception)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import ConfigError, GpuxcError

MINIMAL = "name: demo\nmodel:\n  source: ./model.onnx\n"


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUXC_NO_CACHE", "1")


def compile_error(project: Path, out: Path) -> GpuxcError:
    """The GpuxcError compiling ``project`` raises (any other exception fails the test)."""
    with pytest.raises(GpuxcError) as caught:
        compile_project(project, ["cpu"], out)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "\r" not in message, f"not one line: {message!r}"
    return caught.value


# -- gpux.yml: fixed in gpuxc/project/yamlsource.py ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "version: !!timestamp 3\n", ":4:10: not a valid timestamp"),  # AttributeError in PyYAML
        (MINIMAL + "metadata: {k: !!timestamp 2001-99-99}\n", ":4:15: not a valid timestamp"),  # ValueError
        (MINIMAL + "metadata: {k: !!bool x}\n", ":4:15: not a valid bool"),  # KeyError
        (MINIMAL + "metadata: {k: !!int x}\n", ":4:15: not a valid int"),  # ValueError
        (MINIMAL + "!!int x: 1\n", ":4:1: not a valid int"),  # the same, on a key
        (MINIMAL + "build: {seed: " + "1" * 5000 + "}\n", ":4:15: not a valid int"),  # int() digit limit
        (MINIMAL + "metadata: {k: 0x" + "f" * 4000 + "}\n", ":4:15: not a valid int"),  # json.dumps digit limit
        (MINIMAL + 'description: "\\ud800"\n', ":4:14: a \\u escape is a lone surrogate"),  # UnicodeEncodeError
        (MINIMAL + "description: x\x9by\n", ":4:15: invalid YAML: character #x009b"),  # two-line ReaderError
    ],
)  # fmt: skip
def test_yaml_values_python_cannot_hold_are_config_errors(make_project, tmp_path: Path, text: str,
                                                          expected: str) -> None:  # fmt: skip
    error = compile_error(make_project(config=text), tmp_path / "out")
    assert isinstance(error, ConfigError)
    assert expected in str(error)


def test_escaped_surrogate_pairs_are_joined_as_json_does(make_project, tmp_path: Path) -> None:
    [result] = compile_project(make_project(config=MINIMAL + 'description: "\\ud83d\\ude00"\n'), ["cpu"], tmp_path)
    assert "\U0001f600" in (result.path / "gpux-bundle.json").read_text(encoding="utf-8")


# -- messages that embed a user's string: open ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'name: demo\nmodel:\n  source: "a\\rb"\n',  # ModelError: model file 'a\rb' not found
        MINIMAL + 'inputs:\n  "x\\ny": {type: float32}\n',  # SignatureMismatch: input 'x\ny' is not an input
        MINIMAL + 'build:\n  shapes: {"x\\u000b": [1, 8]}\n',  # PassError from fix-shapes
        MINIMAL + '"a\\nb": 1\n"a\\nb": 2\n',  # ConfigError: duplicate key
    ],
)
def test_a_string_from_gpux_yml_cannot_break_the_error_line(make_project, tmp_path: Path, text: str) -> None:
    compile_error(make_project(config=text), tmp_path / "out")


# -- model.onnx: open ---------------------------------------------------------------------------------


def _with_input_type(elem_type: int) -> onnx.ModelProto:
    """``y = Identity(x)`` with x and y of ``elem_type`` (the ONNX checker accepts every one here)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, [2])],
        [helper.make_tensor_value_info("y", elem_type, [2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize(
    "elem_type",
    [TensorProto.COMPLEX64, TensorProto.UINT4, TensorProto.FLOAT8E4M3FN, TensorProto.UNDEFINED],
    ids=["complex64", "uint4", "float8e4m3fn", "undefined"],
)
def test_an_input_type_without_generated_values_is_a_gpuxc_error(make_project, tmp_path: Path,
                                                                 elem_type: int) -> None:  # fmt: skip
    # reference._values: ValueError "Invalid integer data type 'c'/'V'" or TypeError "data type 'undefined'".
    compile_error(make_project(_with_input_type(elem_type)), tmp_path / "out")


def test_an_unknown_element_type_is_a_model_error(make_project, tmp_path: Path) -> None:
    model = models.mlp()
    model.graph.output[0].type.tensor_type.elem_type = 99  # model.dtype_name: DataType.Name(99) raises ValueError
    compile_error(make_project(model), tmp_path / "out")


def test_a_string_field_that_is_not_utf8_is_a_model_error(make_project, tmp_path: Path) -> None:
    project = make_project()
    data = (project / "model.onnx").read_bytes()
    assert data.count(b"gpuxc-fixtures") == 1
    # proto2 strings are not checked on parse: python-protobuf hands back bytes, and describe() joins them.
    (project / "model.onnx").write_bytes(data.replace(b"gpuxc-fixtures", b"gpuxc\xff\xfeixtures"))  # same length
    compile_error(project, tmp_path / "out")


def test_a_float8_input_reaches_the_isolated_run_and_fails_cleanly(make_project, tmp_path: Path) -> None:
    """Found in CI: float8 reference inputs could not cross to the isolation helper (.npy has no spelling
    for ml_dtypes' types), the helper died, and the compile ended in an uncaught _ServerGone."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "square",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT8E5M2, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT8E5M2, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    compile_error(make_project(model), tmp_path / "out")


def test_a_model_source_too_long_for_the_file_system_is_a_model_error(make_project, tmp_path: Path) -> None:
    """Found in CI: a 300-character file name made Path.is_file() raise ENAMETOOLONG (uncaught OSError)."""
    error = compile_error(make_project(config=f"name: demo\nmodel:\n  source: ./{'x' * 300}.onnx\n"), tmp_path / "o")
    assert error.exit_code == 4 and "cannot be opened" in str(error)
