"""tensorrt: precision in the graph. The fp16 and int8-static graphs TensorRT parses are verified on
the stand-in (ONNX Runtime CPU running that very graph), repaired through the generic loop when they
miss tolerance (the kept nodes computing in float in the graph), and recorded: strongly typed
network, per-layer precision counts, checked on the stand-in and never on an engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from gpuxc_tensorrt.builder import network_flags
from onnx import TensorProto, numpy_helper

from fixtures import models
from gpuxc.build.layer_precision import node_precisions
from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import write_project


def manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))


def elem_types(model: onnx.ModelProto, node_name: str) -> tuple[set[int], set[int]]:
    """Element types of a node's inputs and outputs, as the graph (shape inference) types them."""
    typed = onnx.shape_inference.infer_shapes(model)
    graph = typed.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update((t.name, t.data_type) for t in graph.initializer)
    [node] = [n for n in graph.node if n.name == node_name]
    return {types[i] for i in node.input}, {types[o] for o in node.output}


@pytest.mark.parametrize(
    ("version", "precision", "network", "builder"),
    [
        ("10.0.1", "fp16", ["STRONGLY_TYPED"], []),
        ("11.1.0.6", "int8-static", ["STRONGLY_TYPED"], []),
        ("10.99.0", "fp32", ["STRONGLY_TYPED"], []),
        ("8.6.1", "fp16", ["EXPLICIT_BATCH"], ["FP16"]),
        ("8.6.1", "int8-static", ["EXPLICIT_BATCH"], ["INT8", "FP16"]),
        ("9.3.0", "fp32", ["EXPLICIT_BATCH"], []),
    ],
)
def test_network_flags_follow_the_tensorrt_version(version: str, precision: str, network: list[str],
                                                   builder: list[str]) -> None:  # fmt: skip
    # Strongly typed from TensorRT 10: the graph's types hold and no builder precision flag is set.
    assert network_flags(version, precision) == {"network": network, "builder": builder}


def test_a_fixed_fp16_build_that_misses_tolerance_ships_repaired_with_the_node_in_float(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", models.cancelling_mlp(), {"build": {"precision": "fp16"}}, name="cancel")
    [result] = compile_project(project, ["tensorrt"], tmp_path / "dist")
    assert result.variant == "fp16+keep1"
    data = manifest(result.path)
    # Inside tolerance on the stand-in, and still "unverified": no engine ran.
    assert data["verification"]["status"] == "unverified" and not data["verification"]["failures"]
    failed, repaired = data["build"]["candidates"]
    assert failed["status"] == "failed" and failed["sensitive_nodes"][0]["node"] == "mmc"
    assert repaired["kept_float"] == ["mmc"]
    model = onnx.load(result.path / "model" / "model.onnx")
    ins, outs = elem_types(model, "mmc")
    assert ins == {TensorProto.FLOAT} and outs == {TensorProto.FLOAT}  # casts around it, weights fp32
    assert elem_types(model, "mm1")[1] == {TensorProto.FLOAT16}
    settings = data["artifact"]["settings"]
    assert settings["strongly_typed"] is True
    layers = settings["layer_precision"]
    assert layers["kept_fp32"] == {"mmc": "fp32"}
    assert layers["counts"] == {"fp16": 3, "fp32": 1}  # mm1, concat, mm3 in fp16; mmc in fp32
    assert "not a TensorRT engine" in layers["checked_on"]


def test_int8_static_for_tensorrt_is_symmetric_qdq_and_is_repaired(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((16, 1, 64)).astype(np.float32))
    build = {"precision": "int8-static", "calibration": {"data": "./calib.npz", "samples": 8}}
    project = write_project(folder, models.outlier_mlp(), {"build": build}, name="outlier")
    [result] = compile_project(project, ["tensorrt"], tmp_path / "dist")
    assert result.variant == "int8-static+keep1"
    model = onnx.load(result.path / "model" / "model.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]  # fmt: skip
    # TensorRT parses only symmetric int8 Q/DQ: every zero point int8 and 0.
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    precisions = node_precisions(model)
    assert precisions["mm3"] == "fp32" and precisions["mm1"] == "int8" and precisions["mm2"] == "int8"
    settings = manifest(result.path)["artifact"]["settings"]
    assert settings["layer_precision"]["kept_fp32"] == {"mm3": "fp32"}
    # The quantizer also puts Q/DQ on mm1's and mm2's outputs, so relu1 and the Mul read int8 too.
    assert settings["layer_precision"]["counts"] == {"fp32": 1, "int8": 4}


def test_auto_ships_fp32_and_records_the_repaired_fp16_candidate(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", models.cancelling_mlp(), {"build": {"optimize": "auto"}}, name="cancel")
    [result] = compile_project(project, ["tensorrt"], tmp_path / "dist")
    assert result.variant == "fp32"  # nothing can be timed here
    names = {c["name"]: c for c in manifest(result.path)["build"]["candidates"]}
    assert names["fp16"]["status"] == "failed"
    assert names["fp16+keep1"]["status"] == "unverified" and names["fp16+keep1"]["kept_float"] == ["mmc"]
    assert manifest(result.path)["artifact"]["settings"]["layer_precision"]["counts"] == {"fp32": 4}
