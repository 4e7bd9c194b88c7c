"""gpuxc.project.model.load_model: signatures, hashes, and external data that must stay in its folder."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.parser
import pytest

from fixtures import models
from gpuxc.errors import ModelError, UnsafeModelError
from gpuxc.project import model as gpuxc_model
from gpuxc.project.model import load_model


def saved(tmp_path: Path, proto: onnx.ModelProto, name: str = "model.onnx", **kwargs: Any) -> Path:
    return models.save(proto, tmp_path / name, **kwargs)


def shapes(tensors: list[Any]) -> dict[str, tuple[str, Any]]:
    return {t.name: (t.dtype, t.shape) for t in tensors}


# -- signatures ------------------------------------------------------------------------------


def test_mlp_signature_keeps_the_symbolic_batch_dim(tmp_path: Path) -> None:
    sig = load_model(saved(tmp_path, models.mlp())).signature
    assert shapes(sig.inputs) == {"x": ("float32", ["N", 8])}
    assert shapes(sig.outputs) == {"probs": ("float32", ["N", 3])}
    assert sig.opsets == {"": models.DEFAULT_OPSET}
    assert sig.ir_version == models.DEFAULT_IR_VERSION
    assert sig.producer == "gpuxc-fixtures 1"


def test_fixed_batch_is_an_int(tmp_path: Path) -> None:
    sig = load_model(saved(tmp_path, models.mlp(batch=2))).signature
    assert sig.inputs[0].shape == [2, 8]


def test_text_model_int64_inputs_and_shared_symbols(tmp_path: Path) -> None:
    sig = load_model(saved(tmp_path, models.int64_text_model())).signature
    assert shapes(sig.inputs) == {
        "input_ids": ("int64", ["batch", "seq"]),
        "attention_mask": ("int64", ["batch", "seq"]),
    }
    assert [t.name for t in sig.inputs] == ["input_ids", "attention_mask"]  # graph order kept


def test_multi_io_mixed_dtypes(tmp_path: Path) -> None:
    sig = load_model(saved(tmp_path, models.multi_io())).signature
    assert shapes(sig.inputs) == {
        "a": ("float32", [2, 3]),
        "b": ("float32", [2, 3]),
        "k": ("int32", [2, 3]),
    }
    assert shapes(sig.outputs) == {
        "sum": ("float32", [2, 3]),
        "prod": ("float32", [2, 3]),
        "argmax": ("int64", [2]),
    }
    assert sig.input("k") is not None and sig.input("nope") is None
    assert sig.output("argmax") is not None


def test_scalar_input_has_an_empty_shape_not_an_unknown_one(tmp_path: Path) -> None:
    sig = load_model(saved(tmp_path, models.scalar_input())).signature
    assert sig.input("scale").shape == []
    assert sig.input("x").shape == [4]


def test_ml_domain_opset_is_listed(tmp_path: Path) -> None:
    sig = load_model(saved(tmp_path, models.ml_domain())).signature
    assert sig.opsets == {"": models.DEFAULT_OPSET, "ai.onnx.ml": models.ML_OPSET}
    assert "ai.onnx.ml:Normalizer" in sig.op_types
    assert "ai.onnx.ml:LinearRegressor" in sig.op_types
    assert sig.op_types["Sigmoid"] == 1


def test_legacy_ir3_model_lists_only_the_real_input(tmp_path: Path) -> None:
    proto = models.legacy_initializer_inputs()
    assert [v.name for v in proto.graph.input] == ["x", "W"]  # the trait under test
    loaded = load_model(saved(tmp_path, proto))
    sig = loaded.signature
    assert [t.name for t in sig.inputs] == ["x"]
    assert sig.ir_version == 3
    assert sig.opsets == {"": 9}
    # What passes and targets build from no longer lists W as an input (IR 4+ allows that).
    assert [v.name for v in loaded.proto.graph.input] == ["x"] and loaded.proto.ir_version >= 4
    assert loaded.upgrade is not None and loaded.upgrade.initializer_inputs_dropped == 1
    assert loaded.upgrade.from_opset is None  # opset 9 needs no upgrade


def test_sha256_is_the_hash_of_the_file(tmp_path: Path) -> None:
    path = saved(tmp_path, models.tiny_cnn())
    sig = load_model(path).signature
    assert sig.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sig.size_bytes == path.stat().st_size
    assert sig.external_data == []


def test_node_count_and_op_types(tmp_path: Path) -> None:
    proto = models.tiny_cnn()
    sig = load_model(saved(tmp_path, proto)).signature
    assert sig.node_count == len(proto.graph.node)
    expected: dict[str, int] = {}
    for node in proto.graph.node:
        expected[node.op_type] = expected.get(node.op_type, 0) + 1
    assert sig.op_types == expected
    assert sig.has_subgraphs is False


def test_if_model_has_subgraphs_and_counts_their_ops(tmp_path: Path) -> None:
    proto = models.with_if()
    sig = load_model(saved(tmp_path, proto)).signature
    assert sig.has_subgraphs is True
    assert sig.node_count == len(proto.graph.node) == 1  # main graph only
    # ...while op_types walks into both branches.
    assert sig.op_types["If"] == 1
    assert sig.op_types["Mul"] == 1 and sig.op_types["Sub"] == 1
    assert sig.op_types["Constant"] == 2


def test_constant_weights_model_counts_constant_nodes(tmp_path: Path) -> None:
    sig = load_model(saved(tmp_path, models.constant_weights())).signature
    assert sig.op_types["Constant"] == 4


def test_loaded_proto_has_inferred_shapes(tmp_path: Path) -> None:
    loaded = load_model(saved(tmp_path, models.mlp()))
    inferred = {v.name for v in loaded.proto.graph.value_info}
    assert {"h", "h_relu", "logits"} <= inferred
    assert loaded.path == tmp_path / "model.onnx"


# -- external data ---------------------------------------------------------------------------


def test_external_data_inside_the_folder_loads_and_is_listed(tmp_path: Path) -> None:
    path = saved(tmp_path, models.mlp(), external_data=True)
    side = tmp_path / models.EXTERNAL_DATA_FILE
    assert side.is_file()
    loaded = load_model(path)
    assert loaded.signature.external_data == [models.EXTERNAL_DATA_FILE]
    assert loaded.signature.size_bytes == path.stat().st_size + side.stat().st_size
    # The weights really were read into the proto.
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.proto.graph.initializer}
    original = {t.name: onnx.numpy_helper.to_array(t) for t in models.mlp().graph.initializer}
    assert weights.keys() == original.keys()
    for name, value in original.items():
        np.testing.assert_array_equal(weights[name], value)


def external_model(folder: Path, location: str, *, offset: str = "0", length: str = "32") -> Path:
    return models.external_weight(folder, location, offset, length)


def write_weights(path: Path) -> None:
    path.write_bytes(np.arange(8, dtype=np.float32).tobytes())


class ReadSpy:
    """Records every attempt to touch a file: Python audit events naming it, and calls into
    ONNX's external-data loader (which opens files from C++, invisible to audit hooks)."""

    _installed: ReadSpy | None = None  # audit hooks cannot be removed: one hook, re-targeted per test

    def __init__(self, watched: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.watched = watched
        self.active = True
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.loader_calls: list[str] = []
        if ReadSpy._installed is None:
            sys.addaudithook(ReadSpy._hook)
        ReadSpy._installed = self
        original = onnx.load_external_data_for_model

        def spy(proto: onnx.ModelProto, base_dir: str) -> None:
            self.loader_calls.append(base_dir)
            original(proto, base_dir)

        monkeypatch.setattr(onnx, "load_external_data_for_model", spy)

    @staticmethod
    def _hook(event: str, args: tuple[Any, ...]) -> None:
        spy = ReadSpy._installed
        if spy is None or not spy.active:
            return
        for arg in args:
            if isinstance(arg, (str, bytes, os.PathLike)) and spy.watched in os.fsdecode(arg):
                spy.events.append((event, args))

    def stop(self) -> None:
        self.active = False


@pytest.fixture
def read_spy(monkeypatch: pytest.MonkeyPatch) -> Any:
    spies: list[ReadSpy] = []

    def make(watched: str) -> ReadSpy:
        spy = ReadSpy(watched, monkeypatch)
        spies.append(spy)
        return spy

    yield make
    for spy in spies:
        spy.stop()


def test_read_spy_sees_a_python_open_and_a_loader_call(tmp_path: Path, read_spy: Any) -> None:
    # Control for the test below: the spy notices the kinds of reads it is meant to rule out.
    path = saved(tmp_path, models.mlp(), external_data=True)
    spy = read_spy("weights.bin")
    load_model(path)
    (tmp_path / models.EXTERNAL_DATA_FILE).read_bytes()
    spy.stop()
    assert spy.loader_calls == [str(tmp_path)]
    assert any(event == "open" for event, _ in spy.events)


def test_escaping_external_data_is_refused_before_any_read(tmp_path: Path, read_spy: Any) -> None:
    path = models.external_data_escape(tmp_path)
    assert (tmp_path / "secret.bin").is_file()
    spy = read_spy("secret.bin")
    try:
        with pytest.raises(UnsafeModelError) as info:
            load_model(path)
    finally:
        spy.stop()
    assert "../secret.bin" in str(info.value)
    assert "leaves the model folder" in str(info.value)
    assert spy.events == []
    assert spy.loader_calls == []


def test_absolute_external_data_location_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    write_weights(outside)
    path = external_model(tmp_path / "proj", str(outside))
    with pytest.raises(UnsafeModelError, match="absolute"):
        load_model(path)


def test_symlinked_external_data_file_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    write_weights(outside)
    path = external_model(tmp_path / "proj", "weights.bin")
    (tmp_path / "proj" / "weights.bin").symlink_to(outside)
    with pytest.raises(UnsafeModelError, match="symlink"):
        load_model(path)


def test_symlinked_external_data_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    write_weights(tmp_path / "elsewhere" / "weights.bin")
    path = external_model(tmp_path / "proj", "sub/weights.bin")
    (tmp_path / "proj" / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(UnsafeModelError, match="symlink"):
        load_model(path)


def test_external_data_in_a_real_subfolder_is_accepted(tmp_path: Path) -> None:
    path = external_model(tmp_path / "proj", "sub/weights.bin")
    (tmp_path / "proj" / "sub").mkdir()
    write_weights(tmp_path / "proj" / "sub" / "weights.bin")
    loaded = load_model(path)
    assert loaded.signature.external_data == ["sub/weights.bin"]


@pytest.mark.parametrize(("offset", "length"), [("-1", "32"), ("0", "-32"), ("zero", "32")])
def test_bad_offset_or_length_is_refused(tmp_path: Path, offset: str, length: str) -> None:
    path = external_model(tmp_path / "proj", "weights.bin", offset=offset, length=length)
    write_weights(tmp_path / "proj" / "weights.bin")
    with pytest.raises(UnsafeModelError):
        load_model(path)


def test_missing_external_data_file_is_a_model_error_not_unsafe(tmp_path: Path) -> None:
    path = external_model(tmp_path / "proj", "weights.bin")
    with pytest.raises(ModelError, match="not found") as info:
        load_model(path)
    assert not isinstance(info.value, UnsafeModelError)


def test_check_external_data_runs_before_onnx_reads_weights(tmp_path: Path, monkeypatch) -> None:
    # Ordering, not just outcome: the containment check sees the proto before ONNX does.
    order: list[str] = []
    real_check = gpuxc_model.check_external_data
    real_load = onnx.load_external_data_for_model

    def check(proto: onnx.ModelProto, base: Path) -> list[str]:
        order.append("check")
        return real_check(proto, base)

    def load(proto: onnx.ModelProto, base: str) -> None:
        order.append("load")
        real_load(proto, base)

    monkeypatch.setattr(gpuxc_model, "check_external_data", check)
    monkeypatch.setattr(onnx, "load_external_data_for_model", load)
    load_model(saved(tmp_path, models.mlp(), external_data=True))
    assert order == ["check", "load"]


# -- unreadable or unsupported models --------------------------------------------------------


def test_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a file"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b"\x00garbage\xff" * 10, b"line one\nline two\n" * 5])
def test_garbage_bytes_are_a_one_line_model_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))


def test_empty_file_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="no graph"):
        load_model(path)


def test_opset_6_model_is_loaded_upgraded_with_the_source_signature(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 3, opset_import: ["" : 6]>\ng (float[2] x) => (float[2] y) { y = Relu(x) }'
    )
    loaded = load_model(saved(tmp_path, proto))
    assert loaded.signature.opsets == {"": 6}  # the manifest describes the source file
    assert loaded.upgrade is not None and (loaded.upgrade.from_opset, loaded.upgrade.to_opset) == (6, 17)
    assert {o.domain: o.version for o in loaded.proto.opset_import}[""] == 17  # what passes and targets get


def test_a_model_the_converter_cannot_upgrade_is_one_line_naming_the_op(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 3, opset_import: ["" : 6]>\ng (float[1,2,4,4] x) => (float[1,2,4,4] y) { y = ImageScaler(x) }'
    )
    with pytest.raises(ModelError) as info:
        load_model(saved(tmp_path, proto))
    assert "opset 6" in info.value.message and "ImageScaler" in info.value.message
    assert "\n" not in info.value.message and "%s" not in info.value.message


def test_opset_7_is_accepted(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 3, opset_import: ["" : 7]>\ng (float[2] x) => (float[2] y) { y = Relu(x) }'
    )
    assert load_model(saved(tmp_path, proto)).signature.opsets == {"": 7}


def test_invalid_graph_is_a_model_error(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] x) => (float[2] y) { y = Relu(nope) }'
    )
    path = tmp_path / "bad.onnx"
    onnx.save(proto, path)
    with pytest.raises(ModelError, match="invalid ONNX model"):
        load_model(path)
    # check=False skips the checker (used for artifacts gpuxc itself wrote).
    assert load_model(path, check=False).signature.node_count == 1


def test_non_tensor_input_is_a_model_error(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\ng (seq(float[2]) s) => (int64 n) { n = SequenceLength(s) }'
    )
    with pytest.raises(ModelError, match="not a tensor"):
        load_model(saved(tmp_path, proto))
