"""--optimize auto and fixed precisions through the whole pipeline on the cpu target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import PassError


def wide_mlp(width: int = 256, layers: int = 3) -> onnx.ModelProto:
    """x[N, width] -> (MatMul + Add + Relu) x layers: what dynamic int8 quantization is for."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"h{i}"])]  # fmt: skip
        prev = f"h{i}"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])]
    outputs = [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", width])]
    graph = helper.make_graph(nodes, "wide_mlp", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def manifest_of(result) -> dict:
    return json.loads((result.path / "gpux-bundle.json").read_text())


def test_auto_records_every_candidate_and_ships_one_that_passed(make_project, tmp_path: Path) -> None:
    project = make_project(wide_mlp(), {"build": {"optimize": "auto", "shapes": {"x": [16, 256]}}})
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    build = manifest_of(result)["build"]
    names = [c["name"] for c in build["candidates"]]
    # No calibration data: int8-static is not built, only recorded as not tried (and why).
    assert names == ["fp32", "int8-dynamic", "int8-static"] and build["candidates"][2]["status"] == "not tried"
    chosen = next(c for c in build["candidates"] if c["name"] == build["variant"])
    fp32 = build["candidates"][0]
    assert chosen["status"] == "passed" and result.verification["status"] == "passed"
    assert chosen["latency_ms"] <= fp32["latency_ms"]  # never slower than the plain build
    assert all(c["latency_ms"] > 0 for c in build["candidates"] if c["status"] == "passed")
    assert all(c["size_bytes"] > 0 for c in build["candidates"] if c["status"] == "passed")  # measured before cleanup
    int8 = build["candidates"][1]
    assert "quantize-dynamic" in int8["passes"] and int8["min_cosine"] >= 0.999
    # The shipped passes are the chosen variant's, in order.
    assert [p["name"] for p in build["passes"]][-1] == ("quantize-dynamic" if build["variant"] == "int8-dynamic"
                                                         else "ort-optimize")  # fmt: skip


def test_auto_with_calibration_data_adds_an_int8_static_candidate(make_project, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn(), {"build": {"optimize": "auto", "calibration": {"data": "cal.npz"}}})
    rng = np.random.default_rng(1)
    np.savez(project / "cal.npz", image=rng.standard_normal((8, 1, 3, 32, 32)).astype(np.float32))
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    candidates = {c["name"]: c for c in manifest_of(result)["build"]["candidates"]}
    assert set(candidates) == {"fp32", "int8-dynamic", "int8-static"}
    # A CNN has a single Gemm with initializer weights here; whatever int8-static scored, a
    # failing candidate is never the one shipped.
    shipped = manifest_of(result)["build"]["variant"]
    assert candidates[shipped]["status"] == "passed"
    assert candidates["int8-static"]["status"] in ("passed", "failed")
    assert "quantize-static" in candidates["int8-static"]["passes"] or candidates["int8-static"]["status"] != "passed"


def test_fixed_int8_dynamic_ships_the_quantized_model(make_project, tmp_path: Path) -> None:
    project = make_project(wide_mlp(), {"build": {"precision": "int8-dynamic"}})
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    manifest = manifest_of(result)
    assert manifest["build"]["variant"] == "int8-dynamic" and manifest["build"]["optimize"] == "fixed"
    shipped = onnx.load(result.path / "model" / "model.onnx")
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in shipped.graph.node)
    assert manifest["verification"]["tolerance"]["min_cosine"] == 0.999
    # A lossy variant is judged on more inputs than the one reference input.
    assert manifest["verification"]["samples"] == 5


def test_fp32_is_verified_on_the_reference_input(make_project, tmp_path: Path) -> None:
    [result] = compile_project(make_project(wide_mlp()), ["cpu"], tmp_path / "dist")
    assert manifest_of(result)["verification"]["samples"] == 1


def test_fixed_int8_static_without_calibration_says_how_to_provide_it(make_project, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn(), {"build": {"precision": "int8-static"}})
    with pytest.raises(PassError, match="build.calibration"):
        compile_project(project, ["cpu"], tmp_path / "dist")
    assert not (tmp_path / "dist" / "demo-1.0.0-cpu").exists()


def test_precision_override_from_the_cli_argument(make_project, tmp_path: Path) -> None:
    project = make_project(wide_mlp())
    [result] = compile_project(project, ["cpu"], tmp_path / "dist", precision="int8-dynamic")
    assert manifest_of(result)["build"]["variant"] == "int8-dynamic"
