"""coreml: fp16 compute with chosen ops kept fp32 (FP16ComputePrecision's op selector), chosen by
the fp16 proxy ranking (the fp16 converter's graph on ONNX Runtime CPU) or listed by the user; the
saved .mlpackage's MIL program is inspected here (Core ML itself runs only on macOS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fixtures.models import cancelling_mlp
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import ConfigError
from tests.integration.conftest import write_project

ct = pytest.importorskip("coremltools", reason="the coreml target needs `pip install gpuxc[coreml]`")
FP16 = ct.proto.MIL_pb2.DataType.Value("FLOAT16")
FP32 = ct.proto.MIL_pb2.DataType.Value("FLOAT32")


def build(root: Path, coreml: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, int]]]:
    """The manifest's artifact settings and the saved program's ops: output name -> (op type, dtype)."""
    project = write_project(root / "p", cancelling_mlp(), {"build": {"options": {"coreml": coreml}}}, name="cancel")
    [result] = compile_project(project, ["coreml"], root / "dist")
    settings = json.loads((result.path / "gpux-bundle.json").read_text(encoding="utf-8"))["artifact"]["settings"]
    spec = ct.models.MLModel(str(result.path / "model" / "model.mlpackage"), skip_model_load=True).get_spec()
    main = spec.mlProgram.functions["main"]
    ops = {o.name: (op.type, o.type.tensorType.dataType)
           for op in main.block_specializations[main.opset].operations for o in op.outputs}  # fmt: skip
    return settings, ops


def test_the_proxy_ranking_keeps_the_damaging_node_fp32_and_the_rest_fp16(tmp_path: Path) -> None:
    settings, ops = build(tmp_path, {"compute_precision": "fp16"})
    record = settings["fp16_kept_fp32"]
    assert record["nodes"][0]["node"] == "mmc" and record["nodes"][0]["why"] == "fp16 proxy ranking"
    assert record["nodes"][0]["contribution"] > 0.5
    assert "proxy" in record["chosen_on"] and record["verified"] is False and "macOS" in record["reason"]
    assert ops["c"] == ("matmul", FP32)  # mmc, fed through a cast back to fp32, with fp32 weights
    assert ops["h_cast_fp16"] == ("matmul", FP16)  # mm1 computes in fp16
    assert ops["hh_cast_fp16"] == ("concat", FP16)


def test_listed_nodes_are_kept_exactly(tmp_path: Path) -> None:
    settings, ops = build(tmp_path, {"compute_precision": "fp16", "keep_float": ["mmc"]})
    record = settings["fp16_kept_fp32"]
    assert [n["node"] for n in record["nodes"]] == ["mmc"] and record["mil_ops"] == ["c"]
    assert record["chosen_on"] == "build.options.coreml.keep_float"
    assert ops["c"] == ("matmul", FP32)
    fp16_matmuls = [name for name, (kind, dtype) in ops.items() if kind == "matmul" and dtype == FP16]
    assert len(fp16_matmuls) == 2  # mm1 and mm3


def test_an_empty_list_keeps_nothing(tmp_path: Path) -> None:
    settings, ops = build(tmp_path, {"compute_precision": "fp16", "keep_float": []})
    assert settings["fp16_kept_fp32"]["nodes"] == []
    assert all(dtype == FP16 for kind, dtype in ops.values() if kind == "matmul")


def test_an_unknown_node_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep_float names 'nope', which is not a node"):
        build(tmp_path, {"compute_precision": "fp16", "keep_float": ["mmc", "nope"]})


def test_keep_float_needs_fp16_compute(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep_float applies to compute_precision: fp16"):
        build(tmp_path, {"keep_float": ["mmc"]})
