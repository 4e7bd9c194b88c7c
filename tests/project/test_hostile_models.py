"""Hostile models: each attack is refused with its gpuxc error, exit code and a message naming the
place, before any file outside the model folder (or the attacking file itself) is opened.

Attacks come in three kinds: external data that points elsewhere or lies about its size,
protobuf bombs (size, nesting, node count, rank), and models that ask for too much at run time
(a huge input dim, a huge ConstantOfShape). Every fixture is built in code under tmp_path and
kept small (the >2 GiB file is sparse). The refusal is checked three ways: ``load_model`` in
process under an audit hook, ``load_project`` (the compile's entry, which runs the model's
first load and first ONNX Runtime session in a child process, gpuxc/project/isolation/), and the
``gpuxc compile`` command.

The audit hook sees Python's own opens (``onnx.load``, ONNX's external-data loader); C++ opens
(onnx.checker's path form, ONNX Runtime) are invisible to it, which is why the loader itself is
also watched, and why the refusals happen before either runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fixtures import models
from gpuxc.build.project import load_project
from gpuxc.errors import (
    ExitCode,
    GpuxcError,
    ModelCrashed,
    ModelError,
    ModelLimitExceeded,
    ReferenceError_,
    UnsafeModelError,
)
from gpuxc.project.model import load_model
from gpuxc.project.model_safety import MAX_NODES

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = np.arange(8, dtype=np.float32).tobytes()  # the 4x2 float32 weight every external-data fixture holds


# -- building fixtures -----------------------------------------------------------------------------


def write_config(proj: Path) -> None:
    (proj / "gpux.yml").write_text("name: hostile\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")


def external_model(proj: Path, location: str, offset: str | None = "0", length: str | None = "32") -> Path:
    """``proj/model.onnx`` (fixtures.models.external_weight) and its gpux.yml."""
    path = models.external_weight(proj, location, offset, length)
    write_config(proj)
    return path


def outside(root: Path) -> Path:
    """A real weights file outside the project: a loader that follows the attack would succeed."""
    (root / "outside").mkdir(exist_ok=True)
    secret = root / "outside" / "secret.bin"
    secret.write_bytes(WEIGHTS)
    return secret


def save(proj: Path, proto: onnx.ModelProto | bytes) -> Path:
    proj.mkdir(parents=True, exist_ok=True)
    path = proj / "model.onnx"
    path.write_bytes(proto if isinstance(proto, bytes) else proto.SerializeToString())
    write_config(proj)
    return path


# Raw protobuf: the bombs cannot be built with the protobuf library (it refuses deep nesting).
_field = _int_field = models.proto_field


def _model_bytes(graph: bytes) -> bytes:
    # ModelProto: ir_version = 1, graph = 7, opset_import = 8 (domain = 1, version = 2)
    return _int_field(1, 8) + _field(8, _field(1, b"") + _int_field(2, 17)) + _field(7, graph)


def nested_ifs(depth: int) -> bytes:
    """If inside If ... ``depth`` deep (GraphProto.node = 1, NodeProto.attribute = 5, AttributeProto.g = 6)."""
    graph = _field(1, _field(1, b"x") + _field(2, b"y") + _field(4, b"Identity")) + _field(2, b"leaf")
    for _ in range(depth):
        attr = _field(1, b"then_branch") + _field(6, graph) + _int_field(20, 5)
        graph = _field(1, _field(1, b"c") + _field(2, b"y") + _field(4, b"If") + _field(5, attr)) + _field(2, b"g")
    return _model_bytes(graph)


def many_nodes(n: int) -> bytes:
    node = _field(1, _field(1, b"a") + _field(2, b"a") + _field(4, b"Identity"))
    return _model_bytes(node * n + _field(2, b"g"))


def constant_of_shape_bomb(elements: int) -> onnx.ModelProto:
    """y = x + sum(ConstantOfShape([elements])): ONNX Runtime must allocate ``elements`` floats."""
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT,
                                                                                              [1], [1.0])),
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[helper.make_tensor("shape", TensorProto.INT64, [1], [elements])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def relu_model(input_shape: list[Any], initializer: TensorProto | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, input_shape)],
        initializer=[initializer] if initializer is not None else [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# -- the attacks -----------------------------------------------------------------------------------


@dataclass
class Attack:
    model: Path
    error: type[GpuxcError]
    contains: tuple[str, ...]  # the message names the tensor and the location (or the model file)


def _symlinked_file(root: Path) -> Attack:
    secret, proj = outside(root), root / "proj"
    path = external_model(proj, "weights.bin")
    (proj / "weights.bin").symlink_to(secret)
    return Attack(path, UnsafeModelError, ("'W'", "'weights.bin'", "symlink"))


def _symlinked_folder(root: Path) -> Attack:
    outside(root)
    proj = root / "proj"
    path = external_model(proj, "sub/secret.bin")
    (proj / "sub").symlink_to(root / "outside", target_is_directory=True)
    return Attack(path, UnsafeModelError, ("'W'", "'sub/secret.bin'", "symlink ('sub')"))


def _hardlink(root: Path) -> Attack:
    secret, proj = outside(root), root / "proj"
    path = external_model(proj, "weights.bin")
    os.link(secret, proj / "weights.bin")  # same inode: no path check can tell it lives elsewhere
    return Attack(path, UnsafeModelError, ("'W'", "'weights.bin'", "hard link"))


def _subdir_dotdot(root: Path) -> Attack:
    outside(root)
    path = external_model(root / "proj", "sub/../../outside/secret.bin")
    (root / "proj" / "sub").mkdir()
    return Attack(path, UnsafeModelError, ("'W'", "'sub/../../outside/secret.bin'", "leaves the model folder"))


def _in_folder(location: str, offset: str | None = "0", length: str | None = "32", data: bytes = WEIGHTS,
               make: Callable[[Path], None] | None = None) -> Callable[[Path], Path]:  # fmt: skip
    """A model whose weights file sits in the project, as ``location``, referenced with offset/length."""

    def build(root: Path) -> Path:
        outside(root)
        path = external_model(root / "proj", location, offset, length)
        target = root / "proj" / location
        if make is not None:
            make(target)
        else:
            target.write_bytes(data)
        return path

    return build


def _attack(build: Callable[[Path], Path], error: type[GpuxcError], *contains: str) -> Callable[[Path], Attack]:
    return lambda root: Attack(build(root), error, contains)


def _plain(proto: Callable[[], onnx.ModelProto | bytes], error: type[GpuxcError], *contains: str) -> Any:
    # Model errors name the file; reference errors name the input (they are about its shape).
    named = () if error is ReferenceError_ else ("model.onnx",)
    return lambda root: Attack(save(root / "proj", proto()), error, (*named, *contains))


def _over_2gib(root: Path) -> Attack:
    path = save(root / "proj", relu_model([2]))
    os.truncate(path, (1 << 31) + 10)  # sparse: no disk space, and nothing may read it
    return Attack(path, ModelError, ("model.onnx", "over protobuf's limit"))


def _escape(location: str, *contains: str) -> Callable[[Path], Attack]:
    def build(root: Path) -> Attack:
        outside(root)
        return Attack(external_model(root / "proj", location), UnsafeModelError, ("'W'", f"'{location}'", *contains))

    return build


LOAD_ATTACKS: dict[str, Callable[[Path], Attack]] = {
    # external data: where it points
    "dotdot": _escape("../outside/secret.bin", "leaves the model folder"),
    "subdir-dotdot": _subdir_dotdot,
    "backslash-dotdot": _escape("..\\outside\\secret.bin", "leaves the model folder"),
    "absolute": lambda root: Attack(
        external_model(root / "proj", str(outside(root))), UnsafeModelError, ("'W'", "secret.bin", "absolute")
    ),  # fmt: skip
    "drive-letter": _escape("C:/outside/secret.bin", "absolute"),
    "nul-byte": lambda root: Attack(
        external_model(root / "proj", "weights.bin\x00../x"), UnsafeModelError, ("'W'", "not a usable file name")
    ),  # fmt: skip
    "symlinked-file": _symlinked_file,
    "symlinked-folder": _symlinked_folder,
    "hardlink": _hardlink,
    "directory": _attack(_in_folder("sub", make=lambda p: p.mkdir()), UnsafeModelError, "'W'", "'sub'", "a folder"),
    "fifo": _attack(
        _in_folder("weights.bin", make=lambda p: os.mkfifo(p)), UnsafeModelError, "'W'", "'weights.bin'", "FIFO"
    ),  # fmt: skip
    # external data: offset and length
    "negative-offset": _attack(
        _in_folder("weights.bin", offset="-1"),
        UnsafeModelError,
        "'W'",
        "'weights.bin'",
        "offset '-1' is not a non-negative integer",
    ),  # fmt: skip
    "underscore-offset": _attack(
        _in_folder("weights.bin", offset="1_0"), UnsafeModelError, "'W'", "'weights.bin'", "not a non-negative integer"
    ),  # fmt: skip
    "text-length": _attack(
        _in_folder("weights.bin", length="thirty-two"), UnsafeModelError, "'W'", "'weights.bin'", "length 'thirty-two'"
    ),  # fmt: skip
    "offset-past-end": _attack(
        _in_folder("weights.bin", offset="4096"),
        UnsafeModelError,
        "'W'",
        "'weights.bin'",
        "past the end of the file (32 bytes)",
    ),  # fmt: skip
    "length-past-end": _attack(
        _in_folder("weights.bin", offset="16"), UnsafeModelError, "'W'", "'weights.bin'", "runs past the end"
    ),  # fmt: skip
    "length-2**63": _attack(
        _in_folder("weights.bin", length=str(1 << 63)), UnsafeModelError, "'W'", "'weights.bin'", "out of range"
    ),  # fmt: skip
    "offset-2**64": _attack(
        _in_folder("weights.bin", offset=str(1 << 64)), UnsafeModelError, "'W'", "'weights.bin'", "out of range"
    ),  # fmt: skip
    "length-vs-dims": _attack(
        _in_folder("weights.bin", length="16"), UnsafeModelError, "'W'", "'weights.bin'", "dims [4, 2] need 32"
    ),  # fmt: skip
    "no-length-big-file": _attack(
        _in_folder("weights.bin", length=None, data=WEIGHTS * 1000), UnsafeModelError, "'W'", "'weights.bin'", "need 32"
    ),  # fmt: skip
    # protobuf bombs and bounds
    "file-over-2GiB": _over_2gib,
    "nested-ifs-1000": _plain(lambda: nested_ifs(1000), ModelError, "deeper than protobuf's limit"),
    "a-million-nodes": _plain(lambda: many_nodes(MAX_NODES + 1), ModelError, "more than 1,000,000 nodes"),
    "rank-100000-input": _plain(lambda: relu_model([1] * 100_000), ModelError, "'x'", "rank 100,000"),
    "rank-100000-initializer": _plain(
        lambda: relu_model([2], helper.make_tensor("k", TensorProto.FLOAT, [1] * 100_000, [1.0])),
        ModelError,
        "'k'",
        "rank 100,000",
    ),  # fmt: skip
    "dims-vs-data": _plain(
        lambda: relu_model([2], TensorProto(name="k", data_type=TensorProto.FLOAT, dims=[1 << 40], raw_data=bytes(16))),
        ModelError,
        "invalid ONNX model",
        "(tensor name: k)",
        "too small",
    ),  # fmt: skip
}

# Refused only when the reference is made or run: the project-level and CLI checks cover them.
RUN_ATTACKS: dict[str, Callable[[Path], Attack]] = {
    "input-dim-2**40": _plain(
        lambda: relu_model([1 << 40]), ReferenceError_, "'x'", "1099511627776", "limited to 4 GiB"
    ),  # fmt: skip
    "input-dims-product": _plain(lambda: relu_model([1 << 16, 1 << 16]), ReferenceError_, "'x'", "[65536, 65536]"),
    "constant-of-shape-4TiB": _plain(
        lambda: constant_of_shape_bomb(1 << 40), ModelLimitExceeded, "ONNX Runtime", "memory"
    ),  # fmt: skip
}


# -- watching opens --------------------------------------------------------------------------------


class OpenWatch:
    """Paths under ``root`` opened while active (audit hooks cannot be removed: one hook, re-targeted)."""

    current: OpenWatch | None = None
    installed = False

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.opened: list[str] = []
        self.loader_calls: list[str] = []
        if not OpenWatch.installed:
            sys.addaudithook(OpenWatch._hook)
            OpenWatch.installed = True

    @staticmethod
    def _hook(event: str, args: tuple[Any, ...]) -> None:
        watch = OpenWatch.current
        if watch is None or event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(watch.root):
            watch.opened.append(path)

    def __enter__(self) -> OpenWatch:
        OpenWatch.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        OpenWatch.current = None


@pytest.fixture
def watch_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OpenWatch:
    watch = OpenWatch(tmp_path)
    original = onnx.load_external_data_for_model

    def loader(proto: onnx.ModelProto, base_dir: str) -> None:
        watch.loader_calls.append(base_dir)
        original(proto, base_dir)

    monkeypatch.setattr(onnx, "load_external_data_for_model", loader)
    return watch


def assert_one_line(error: GpuxcError, attack: Attack) -> None:
    message = str(error)
    assert type(error) is attack.error, f"{type(error).__name__}: {message}"
    assert error.exit_code == attack.error.exit_code
    assert "\n" not in message
    for text in attack.contains:
        assert text in message, f"{text!r} not in {message!r}"


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOAD_ATTACKS))
def test_attack_is_refused_before_anything_outside_is_opened(name: str, tmp_path: Path,
                                                             watch_opens: OpenWatch) -> None:  # fmt: skip
    attack = LOAD_ATTACKS[name](tmp_path)
    with watch_opens, pytest.raises(GpuxcError) as info:
        load_model(attack.model)
    assert_one_line(info.value, attack)
    assert info.value.exit_code == ExitCode.MODEL
    # Nothing under tmp_path but the model file itself was opened: not the outside file, not the
    # link, FIFO or folder in the project that stands for it; and ONNX's loader never ran.
    assert set(watch_opens.opened) <= {str(attack.model)}, watch_opens.opened
    assert watch_opens.loader_calls == []
    if name == "file-over-2GiB":
        assert watch_opens.opened == []  # refused on its size alone


def test_the_watch_sees_an_outside_open(tmp_path: Path, watch_opens: OpenWatch) -> None:
    # Control: the hook notices what the test above rules out.
    secret = outside(tmp_path)
    with watch_opens:
        secret.read_bytes()
    assert watch_opens.opened == [str(secret)]


def test_contained_external_data_with_exact_offsets_still_loads(tmp_path: Path) -> None:
    # The checks are not so strict that an ordinary external-data model fails: two tensors in one file.
    path = external_model(tmp_path / "proj", "sub/weights.bin", offset="32", length="32")
    (tmp_path / "proj" / "sub").mkdir()
    (tmp_path / "proj" / "sub" / "weights.bin").write_bytes(b"\xff" * 32 + WEIGHTS)
    loaded = load_model(path)
    assert loaded.signature.external_data == ["sub/weights.bin"]
    weight = onnx.numpy_helper.to_array(loaded.proto.graph.initializer[0])
    np.testing.assert_array_equal(weight.reshape(-1), np.arange(8, dtype=np.float32))


def test_a_symlinked_model_file_is_followed(tmp_path: Path) -> None:
    # The model file is named by the user (CLI argument, gpux.yml), not by the model: a link to a
    # model store is fine. Its external data is looked up beside the path given (for compile,
    # gpux.yml's model.source resolved: the real file's folder) and must be a real file there.
    store = tmp_path / "store"
    real = external_model(store, "weights.bin")
    (store / "weights.bin").write_bytes(WEIGHTS)
    link = tmp_path / "proj" / "model.onnx"
    link.parent.mkdir()
    link.symlink_to(real)
    with pytest.raises(ModelError, match="not found"):
        load_model(link)  # beside the link: no weights.bin there
    assert load_model(link.resolve()).signature.external_data == ["weights.bin"]


@pytest.mark.parametrize("name", sorted(LOAD_ATTACKS) + sorted(RUN_ATTACKS))
def test_attack_through_the_isolated_compile_entry(name: str, tmp_path: Path) -> None:
    # load_project: the model's first load and ONNX Runtime session run in a child process; the
    # error, its class and exit code come back the same.
    attack = {**LOAD_ATTACKS, **RUN_ATTACKS}[name](tmp_path)
    with pytest.raises(GpuxcError) as info:
        load_project(attack.model.parent)
    assert_one_line(info.value, attack)


def _compile(project: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPUXC_")}
    full_env.update(PYTHONDONTWRITEBYTECODE="1", **env)
    return subprocess.run([sys.executable, "-m", "gpuxc", "compile", str(project), "-o", str(out)], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("dotdot", {}),
        ("hardlink", {}),
        ("input-dim-2**40", {}),
        ("constant-of-shape-4TiB", {"GPUXC_MODEL_MEMORY_LIMIT": "2GiB"}),
    ],
)
def test_gpuxc_compile_prints_one_line_and_the_documented_code(name: str, env: dict[str, str],
                                                               tmp_path: Path) -> None:  # fmt: skip
    from tests.integration.conftest import assert_one_error_line

    attack = {**LOAD_ATTACKS, **RUN_ATTACKS}[name](tmp_path)
    proc = _compile(attack.model.parent, tmp_path / "dist", **env)
    assert proc.returncode == attack.error.exit_code, proc.stderr
    assert_one_error_line(proc.stderr, contains=attack.contains)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_gpuxc_compile_reports_a_crash_in_the_child(tmp_path: Path) -> None:
    # No model is known to crash this ONNX Runtime, so the test hook makes the child segfault where
    # the session is created; the CLI reports it in one line with exit 15.
    from tests.integration.conftest import assert_one_error_line

    proj = save(tmp_path / "proj", relu_model(["n", 2]))
    proc = _compile(proj.parent, tmp_path / "dist", GPUXC_ISOLATION_TEST_FAULT="segv:run")
    assert proc.returncode == ModelCrashed.exit_code == 15, proc.stderr
    assert_one_error_line(proc.stderr, contains=["model.onnx: ONNX Runtime crashed (SIGSEGV) while creating a session"])
