"""gpuxc export triton: a model repository whose config.pbtxt parses with Triton's own ModelConfig
schema and whose model file reproduces the bundle's reference outputs. Triton itself cannot run
here (FIELD_NOTES): these tests check the files Triton would load, not a Triton server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from google.protobuf import text_format
from onnx import numpy_helper
from typer.testing import CliRunner

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle.manifest import ServingInfo, TensorSpecOut
from gpuxc.cli import app
from gpuxc.errors import ExportError
from gpuxc.export import MARKER, open_bundle, triton
from gpuxc.export.triton_config import Plan, build_config, model_config_module

pb = model_config_module()  # Triton's own ModelConfig schema (tritonclient's model_config_pb2)

LABELS = ["cat", "dog", "bird"]


def _compile(root: Path, target: str, extra: dict[str, Any], fallback: list[str] | None = None) -> Path:
    tag = "-".join([target, *(fallback or [])])
    project = root / f"proj-{tag}"
    project.mkdir()
    onnx.save(models.mlp(), project / "model.onnx")
    config = {"name": "tiny", "model": {"source": "./model.onnx"}, **extra}
    (project / "gpux.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    [result] = compile_project(project, [target], root / f"dist-{tag}", fallback=fallback)
    return result.path


BATCHING = {"serving": {"max_batch_size": 8, "max_queue_delay": 0.005, "max_workers": 2},
            "outputs": {"probs": {"labels": LABELS}}}  # fmt: skip


TRT = {"build": {"precision": "fp16"}, "runtime": {"gpu": {"memory": "1GiB"}}, "serving": {"max_workers": 2}}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton")
    return {
        "cpu": _compile(root, "cpu", BATCHING),
        "openvino": _compile(root, "openvino", {"serving": {"max_workers": 3}}),
        "tensorrt": _compile(root, "tensorrt", TRT),
    }


def export(bundle: Path, out: Path) -> triton.ExportResult:
    return triton.export(bundle, out, open_bundle(bundle))


def parsed(repo: Path, name: str = "tiny") -> Any:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(encoding="utf-8"), pb.ModelConfig())


def test_cpu_bundle_batches_with_labels_on_cpu_instances(bundles: dict[str, Path], tmp_path: Path) -> None:
    result = export(bundles["cpu"], tmp_path / "repo")
    config = parsed(tmp_path / "repo")
    assert config.name == "tiny" and config.backend == "onnxruntime"
    assert config.max_batch_size == 8  # serving.max_batch_size; the shared symbolic dim N is the batch dim
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    [group] = config.instance_group
    assert (group.count, group.kind) == (2, pb.ModelInstanceGroup.KIND_CPU)
    [x] = config.input
    assert (x.name, x.data_type, list(x.dims)) == ("x", pb.TYPE_FP32, [8])
    [probs] = config.output
    assert (probs.name, list(probs.dims), probs.label_filename) == ("probs", [3], "probs_labels.txt")
    assert (tmp_path / "repo/tiny/probs_labels.txt").read_text(encoding="utf-8").split() == LABELS
    assert (tmp_path / "repo/tiny/1/model.onnx").read_bytes() == (bundles["cpu"] / "model/model.onnx").read_bytes()
    assert "tiny/1/model.onnx" in result.files and (tmp_path / "repo" / MARKER).is_file()
    assert any("checked 1/model.onnx on ONNX Runtime" in n for n in result.notes)
    assert any("Triton itself was not run" in n for n in result.notes)


def test_openvino_bundle_gets_the_openvino_backend(bundles: dict[str, Path], tmp_path: Path) -> None:
    result = export(bundles["openvino"], tmp_path / "repo")
    config = parsed(tmp_path / "repo")
    assert config.backend == "openvino" and not config.platform
    assert sorted(p.name for p in (tmp_path / "repo/tiny/1").iterdir()) == ["model.bin", "model.xml"]
    # serving.max_batch_size 1: the batch dim stays Triton's, without a dynamic batcher.
    assert config.max_batch_size == 1 and not config.HasField("dynamic_batching")
    [group] = config.instance_group
    assert (group.count, group.kind) == (3, pb.ModelInstanceGroup.KIND_CPU)
    assert any("checked 1/model.xml on OpenVINO" in n for n in result.notes)


def test_tensorrt_bundle_defers_the_engine_to_the_trt_accelerator(bundles: dict[str, Path], tmp_path: Path) -> None:
    result = export(bundles["tensorrt"], tmp_path / "repo")
    config = parsed(tmp_path / "repo")
    assert config.backend == "onnxruntime"
    [group] = config.instance_group
    assert (group.count, group.kind) == (2, pb.ModelInstanceGroup.KIND_GPU)
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {"precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30)}
    assert (tmp_path / "repo/tiny/1/model.onnx").read_bytes() == (bundles["tensorrt"] / "model/model.onnx").read_bytes()
    assert any("deferred" in n for n in result.notes)


def test_tensorrt_engine_built_ahead_of_time_is_a_plan(bundles: dict[str, Path], tmp_path: Path) -> None:
    # What a compile on a GPU host records (plugins/gpuxc_tensorrt/target.py, _build_ahead): no GPU here.
    bundle = shutil.copytree(bundles["tensorrt"], tmp_path / "aot")
    (bundle / "model/model.engine").write_bytes(b"ENGINE")
    manifest = open_bundle(bundle)
    manifest.artifact.settings.update(engine="aot", gpu="NVIDIA H200", tensorrt_version="10.9")
    manifest.serving.max_batch_size = 64
    result = triton.export(bundle, tmp_path / "repo", manifest)
    config = parsed(tmp_path / "repo")
    assert config.platform == "tensorrt_plan" and not config.backend
    assert config.max_batch_size == 8  # the engine's profile allows batches up to 8, not serving's 64
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    assert (tmp_path / "repo/tiny/1/model.plan").read_bytes() == b"ENGINE"
    assert any("NVIDIA H200" in n for n in result.notes) and any("was not run here" in n for n in result.notes)


def test_a_model_file_that_disagrees_with_the_reference_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = shutil.copytree(bundles["cpu"], tmp_path / "tampered")
    model = onnx.load(str(bundle / "model/model.onnx"))
    [bias] = [t for t in model.graph.initializer if t.name == "B2"]
    # Not a constant shift: softmax would cancel it.
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32([3, 0, -3]), "B2"))
    onnx.save(model, bundle / "model/model.onnx")
    with pytest.raises(ExportError, match="disagrees with the bundle's reference outputs"):
        export(bundle, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_existing_folder_that_is_not_an_export_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "mine.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(ExportError, match="not a gpuxc export"):
        export(bundles["cpu"], tmp_path / "repo")
    assert (tmp_path / "repo" / "mine.txt").read_text(encoding="utf-8") == "keep"


def test_re_export_replaces_the_earlier_one_whole(bundles: dict[str, Path], tmp_path: Path) -> None:
    export(bundles["cpu"], tmp_path / "repo")
    (tmp_path / "repo/tiny/stale.txt").write_text("old", encoding="utf-8")
    export(bundles["openvino"], tmp_path / "repo")
    assert not (tmp_path / "repo/tiny/stale.txt").exists()
    assert not (tmp_path / "repo/tiny/1/model.onnx").exists() and (tmp_path / "repo/tiny/1/model.xml").is_file()


@pytest.fixture(scope="module")
def coreml_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton-coreml")
    return {"coreml": _compile(root, "coreml", {}), "fallback": _compile(root, "coreml", {}, ["cpu"])}


def test_coreml_bundle_exits_17_naming_what_works(coreml_bundles: dict[str, Path], tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["export", "triton", str(coreml_bundles["coreml"]), "-o", str(tmp_path / "repo")])
    assert out.exit_code == 17
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and "compile with -t cpu, openvino, cuda or tensorrt" in lines[0], out.output
    assert not (tmp_path / "repo").exists()


def test_fallback_bundle_exports_its_first_variant_triton_runs(coreml_bundles: dict[str, Path], tmp_path: Path) -> None:
    result = export(coreml_bundles["fallback"], tmp_path / "repo")
    assert parsed(tmp_path / "repo").backend == "onnxruntime"
    assert (tmp_path / "repo/tiny/1/model.onnx").read_bytes() == (
        coreml_bundles["fallback"] / "variants/cpu/model.onnx").read_bytes()  # fmt: skip
    assert any("exported variant 'cpu'" in n and "cannot run coreml" in n for n in result.notes)


def spec(name: str, dtype: str, shape: list[int | str | None] | None) -> TensorSpecOut:
    return TensorSpecOut(name=name, dtype=dtype, shape=shape)


SERVING = ServingInfo(host="127.0.0.1", port=8080, timeout=5, max_workers=1, max_batch_size=4)


def test_without_a_shared_batch_dim_dims_are_full_and_nothing_batches() -> None:
    inputs = [spec("ids", "int64", ["N", "T"]), spec("scale", "float32", [])]
    outputs = [spec("out", "float32", ["M", 4])]  # another symbol: not provably the batch dim
    config = build_config(Plan(name="m", backend="onnxruntime"), inputs, outputs, SERVING)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    ids, scale = config.input
    assert (list(ids.dims), ids.data_type) == ([-1, -1], pb.TYPE_INT64)
    # A scalar: Triton tensors have a dim, the reshape hands the model its [].
    assert list(scale.dims) == [1] and scale.HasField("reshape") and list(scale.reshape.shape) == []
    assert list(config.output[0].dims) == [-1, 4]


def test_tensors_triton_cannot_carry_are_refused() -> None:
    with pytest.raises(ExportError, match="output 'zipmap': type seq"):
        build_config(Plan(name="m"), [spec("x", "float32", ["N", 2])],
                     [spec("zipmap", "seq(map(int64,float32))", None)], SERVING)  # fmt: skip
    with pytest.raises(ExportError, match="unknown rank"):
        build_config(Plan(name="m"), [spec("x", "float32", None)], [], SERVING)


def test_openvino_precision_hint_carries_over_or_is_named() -> None:
    notes: list[str] = []
    settings = {
        "inference_precision": "bf16",
        "performance_hint": "throughput",
        "intra_op_threads": 4,
        "num_streams": 1,
    }
    expected = {"HINT_BF16": "YES", "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": "4", "NUM_STREAMS": "1"}
    assert triton._openvino_parameters(settings, notes) == expected
    assert not notes
    assert triton._openvino_parameters({"inference_precision": "f32"}, notes) == {"PERFORMANCE_HINT": "LATENCY"}
    assert "verified at inference precision f32" in notes[0]


def test_without_tritonclient_grpc_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from gpuxc.export import triton_config

    # As on a host without tritonclient's grpc part: no schema file, none loaded yet.
    monkeypatch.setattr(triton_config, "_schema_path", lambda: None)
    monkeypatch.delitem(sys.modules, triton_config._SCHEMA_MODULE, raising=False)
    monkeypatch.delitem(sys.modules, "tritonclient.grpc.model_config_pb2", raising=False)
    with pytest.raises(ExportError, match=r"gpuxc\[export\]"):
        build_config(Plan(name="m"), [], [], SERVING)


def test_text_and_directml_bundles_say_what_triton_gets(bundles: dict[str, Path]) -> None:
    from gpuxc.project.preprocessing import TextPreprocessing

    manifest = open_bundle(bundles["cpu"])
    text = manifest.model_copy(update={"target": "directml", "preprocessing": TextPreprocessing.model_construct()})
    chosen = triton.choose_variant(text)
    plan, notes = triton._plan(bundles["cpu"], text, chosen, "tiny")
    assert plan.gpu and plan.backend == "onnxruntime"
    assert any("CUDA (KIND_GPU), not DirectML" in n for n in notes)
    assert any("Triton takes the token tensors (x)" in n and "tokenizer.json" in n for n in notes)


def test_an_unnamed_output_batch_dim_batches_like_the_bundles_server() -> None:
    # The runner's Batcher.eligible rule: dynamic first dims, one symbol at most (None: unnamed).
    inputs, outputs = [spec("x", "float32", ["N", 2])], [spec("y", "float32", [None, 2])]
    config = build_config(Plan(name="m"), inputs, outputs, SERVING)
    assert config.max_batch_size == 4 and config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(config.input[0].dims) == [2] and list(config.output[0].dims) == [2]
