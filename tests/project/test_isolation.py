"""gpuxc.project.isolation: the model's first load and ONNX Runtime session run in a child process under a
memory limit and a clock; a child that crashes or runs over becomes one clear error, the caller lives.

No model is known to crash this ONNX Runtime, so crashes are made with the test hook
``GPUXC_ISOLATION_TEST_FAULT`` (the child aborts or segfaults where a native bug would). Memory
and time limits are exercised for real: a ConstantOfShape that allocates past the limit, a Loop
that never ends.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import TensorProto, helper

from fixtures import models
from gpuxc.build.project import load_project
from gpuxc.errors import ConfigError, ExitCode, ModelCrashed, ModelError, ModelLimitExceeded
from gpuxc.ort_session import run_onnxruntime
from gpuxc.project import isolation
from gpuxc.project.isolation import helper as isolation_helper
from gpuxc.project.isolation import protocol
from gpuxc.project.model import load_model
from gpuxc.project.reference import make_inputs
from tests.project.test_hostile_models import constant_of_shape_bomb, relu_model, save

GIB = 1 << 30


@pytest.fixture(autouse=True)
def _no_isolation_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (isolation.MEMORY_ENV, isolation.TIMEOUT_ENV, isolation.ISOLATION_ENV, isolation.FAULT_ENV):
        monkeypatch.delenv(name, raising=False)


def still_works(tmp_path: Path) -> None:
    """The caller survived: the next isolated load and run succeed."""
    path = save(tmp_path / "after", relu_model(["n", 2]))
    assert isolation.load_model(path).signature.inputs[0].shape == ["n", 2]
    out = isolation.run_onnxruntime(path, {"x": np.array([[-1.0, 2.0]], np.float32)})
    np.testing.assert_array_equal(out["y"], [[0.0, 2.0]])


# -- ordinary models are unaffected ----------------------------------------------------------------


@pytest.mark.parametrize("build", [models.mlp, models.tiny_cnn, models.with_if, models.int64_text_model])
def test_ordinary_models_compile_entry_under_the_default_limit(build, tmp_path: Path) -> None:
    proj = save(tmp_path / "proj", build()).parent
    project = load_project(proj)
    expected = run_onnxruntime(project.model.path, project.reference_inputs)  # in process, as before
    assert project.reference_outputs.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(project.reference_outputs[name], value)
    assert project.model.signature == load_project(proj).model.signature


def test_real_model_loads_and_runs_under_the_default_limit(magika_model: Path, tmp_path: Path) -> None:
    from gpuxc.project.config_load import load_config

    assert isolation.memory_limit() == isolation.physical_memory()
    loaded = isolation.load_model(magika_model)
    in_process = load_model(magika_model)
    assert loaded.signature == in_process.signature
    save(tmp_path / "proj", relu_model([1]))  # any gpux.yml: make_inputs needs a config
    inputs = make_inputs(loaded.signature, load_config(tmp_path / "proj" / "gpux.yml"), in_process.proto)
    out = isolation.run_onnxruntime(magika_model, inputs)
    expected = run_onnxruntime(magika_model, inputs)
    for name, value in expected.items():
        np.testing.assert_array_equal(out[name], value)


def test_the_step_runs_in_another_process_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    where = {"model_path": Path("model.onnx"), "first_stage": ("test", "asking for a pid")}
    assert isolation.run_isolated("pid", **where) != os.getpid()
    monkeypatch.setenv(isolation.ISOLATION_ENV, "0")
    assert isolation.run_isolated("pid", **where) == os.getpid()


def test_gpuxc_errors_come_back_with_class_and_hint(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(  # ImageScaler left the standard: the opset-6 upgrade refuses it
        '<ir_version: 3, opset_import: ["" : 6]>\ng (float[1,2,4,4] x) => (float[1,2,4,4] y) { y = ImageScaler(x) }'
    )
    path = save(tmp_path / "proj", proto)
    with pytest.raises(ModelError) as info:
        isolation.load_model(path)
    assert type(info.value) is ModelError
    assert "ImageScaler" in info.value.message and "opset 7" in (info.value.hint or "")


def test_native_log_lines_stay_out_of_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # ONNX Runtime logs its own error line to stderr before raising; from the child it goes to a file.
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2], raw_data=bytes(32))  # 32 bytes for 8
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "xy")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], initializer=[weight])
    path = save(tmp_path / "proj", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    with pytest.raises(ModelError, match="ONNX Runtime cannot load the model"):
        isolation.run_onnxruntime(path, {"x": np.zeros(2, np.float32)})
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


# -- crashes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "step", "expected"),
    [
        ("abort:load", "load", "model.onnx: onnx crashed (SIGABRT) while loading the model"),
        ("segv:load", "load", "model.onnx: onnx crashed (SIGSEGV) while loading the model"),
        ("abort:run", "run", "model.onnx: ONNX Runtime crashed (SIGABRT) while creating a session"),
        ("segv:run", "run", "model.onnx: ONNX Runtime crashed (SIGSEGV) while creating a session"),
    ],
)
def test_a_child_killed_by_a_signal_is_a_crash_not_a_dead_caller(fault: str, step: str, expected: str,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 ) -> None:  # fmt: skip
    path = save(tmp_path / "proj", relu_model(["n", 2]))
    monkeypatch.setenv(isolation.FAULT_ENV, fault)
    with pytest.raises(ModelCrashed) as info:
        if step == "load":
            isolation.load_model(path)
        else:
            isolation.run_onnxruntime(path, {"x": np.ones((1, 2), np.float32)})
    assert info.value.exit_code == ExitCode.MODEL_CRASHED == 15
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)
    monkeypatch.delenv(isolation.FAULT_ENV)
    still_works(tmp_path)


def test_a_crash_during_compile_names_gpux_yml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = save(tmp_path / "proj", relu_model(["n", 2])).parent
    monkeypatch.setenv(isolation.FAULT_ENV, "segv:load")
    with pytest.raises(ModelCrashed, match=r"gpux\.yml:3:\d+: model\.onnx: onnx crashed \(SIGSEGV\)"):
        load_project(proj)


# -- memory and time -------------------------------------------------------------------------------


def test_an_allocation_past_the_memory_limit_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1.5 GiB of floats: fine for this machine, over a 1 GiB limit.
    path = save(tmp_path / "proj", constant_of_shape_bomb(3 * GIB // 2 // 4))
    x = {"x": np.zeros(1, np.float32)}
    monkeypatch.setenv(isolation.MEMORY_ENV, "1GiB")
    with pytest.raises(ModelLimitExceeded) as info:
        isolation.run_onnxruntime(path, x)
    assert info.value.exit_code == ExitCode.MODEL_LIMIT == 16
    assert str(info.value).startswith("model.onnx: ONNX Runtime exceeded the memory limit of 1 GiB "
                                      "(GPUXC_MODEL_MEMORY_LIMIT) while ")  # fmt: skip
    # Control: it is the limit that stopped it; with room, the same model runs.
    monkeypatch.setenv(isolation.MEMORY_ENV, "4GiB")
    assert isolation.run_onnxruntime(path, x)["y"][0] > 1e8  # a float32 sum of 402,653,184 ones
    still_works(tmp_path)


def test_a_huge_allocation_fails_cleanly_under_the_default_limit(tmp_path: Path) -> None:
    proj = save(tmp_path / "proj", constant_of_shape_bomb(1 << 40)).parent  # 4 TiB
    with pytest.raises(ModelLimitExceeded, match="ONNX Runtime exceeded the memory limit of .* while"):
        load_project(proj)


def test_a_run_past_the_clock_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.conftest import endless_loop_model

    path = save(tmp_path / "proj", endless_loop_model())
    monkeypatch.setenv(isolation.TIMEOUT_ENV, "1")
    start = time.monotonic()
    with pytest.raises(ModelLimitExceeded) as info:
        isolation.run_onnxruntime(path, {"steps": np.array(1 << 62), "x": np.zeros(4, np.float32)})
    assert time.monotonic() - start < 30
    assert str(info.value).startswith("model.onnx: ONNX Runtime took longer than 1 s while running the reference "
                                      "inputs (GPUXC_MODEL_TIMEOUT)")  # fmt: skip
    still_works(tmp_path)


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8GiB", 8 * GIB), ("8gib", 8 * GIB), ("512MiB", 512 << 20), ("1.5GiB", 3 * GIB // 2), ("8G", 8 * 10**9),
     ("2GB", 2 * 10**9), ("123456", 123456), ("0", None), ("none", None)],
)  # fmt: skip
def test_memory_limit_setting(text: str, expected: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(isolation.MEMORY_ENV, text)
    assert isolation.memory_limit() == expected


@pytest.mark.parametrize(("name", "value"), [(isolation.MEMORY_ENV, "lots"), (isolation.TIMEOUT_ENV, "soon")])
def test_bad_settings_are_config_errors(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        isolation.run_isolated("pid", model_path=Path("model.onnx"), first_stage=("test", "testing"))


def test_default_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    physical = isolation.physical_memory()
    assert physical is not None and physical > GIB
    assert isolation.memory_limit() == physical
    assert isolation.timeout_s() == isolation.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(isolation.TIMEOUT_ENV, "0")
    assert isolation.timeout_s() is None


def test_helper_process_is_restarted_after_it_goes(tmp_path: Path) -> None:
    isolation_helper.close_server()
    still_works(tmp_path)
    assert isolation_helper._server is not None
    isolation_helper._server.proc.kill()
    isolation_helper._server.proc.wait()
    still_works(tmp_path)


def test_a_helper_that_dies_is_a_crash_and_the_next_call_starts_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    where = {"model_path": Path("model.onnx"), "first_stage": ("onnx", "loading the model")}
    isolation.run_isolated("pid", **where)  # a helper is running

    def gone(self, job, clock):
        raise isolation_helper.ServerGone("gpuxc's model isolation helper process died")

    with monkeypatch.context() as patch:
        patch.setattr(isolation_helper.Server, "call", gone)
        with pytest.raises(ModelCrashed) as caught:
            isolation.run_isolated("pid", **where)
    assert caught.value.exit_code == ExitCode.MODEL_CRASHED
    assert "isolation helper died while loading the model" in str(caught.value)
    assert isolation.run_isolated("pid", **where) != os.getpid()  # a fresh helper


def test_a_job_the_helper_cannot_read_is_an_error_and_the_helper_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    where = {"model_path": Path("model.onnx"), "first_stage": ("onnx", "loading the model")}
    first = isolation.run_isolated("pid", **where)
    real_encode = protocol.encode

    def garbled(value):
        data = real_encode(value)
        return data.replace(b'"$path"', b'"$nope"') if isinstance(value, tuple) and value[0] == "job" else data

    with monkeypatch.context() as patch:
        patch.setattr(protocol, "encode", garbled)
        with pytest.raises(ModelError, match="could not be read"):
            isolation.run_isolated("load", Path("model.onnx"), **where)
    assert isolation.run_isolated("pid", **where) != first  # a new child of the same helper
