"""The built-in pass library as a whole (plugins/gpuxc_passes): every pass registered with a documented
Config, and every pass survives the exotic graphs of fixtures.models: applied with outputs still
correct, or skipped with the reason recorded, never a crash; required, a failure is a PassError
naming the pass. Each pass's own behaviour is tested in its module (test_fp16.py, ...).
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fixtures import models
from gpuxc.errors import PassError
from gpuxc.plugin import get_registry
from tests.plugins.gpuxc_passes.conftest import (
    apply,
    assert_close,
    f32,
    model_of,
    rng_inputs,
    unknown_dims_model,
    weights,
)

REPO = Path(__file__).resolve().parents[3]
NEW_PASSES = ["simplify", "fold-constants", "fp16", "quantize-dynamic", "quantize-static", "ort-format",
              "transformer-fusion", "quantize-int4"]  # fmt: skip


def dynamic_rank_model() -> onnx.ModelProto:
    """``x`` of unknown rank (no shape at all) -> MatMul(W[4, 3]) + b -> Relu."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(weights(4, 3), "W"), numpy_helper.from_array(np.full(3, 0.1, np.float32), "b")]
    # The ONNX checker wants a shape on main-graph inputs and outputs; ONNX Runtime does not, and
    # exporters do write such models: this one is built unchecked on purpose.
    return model_of(nodes, [f32("x", None)], [f32("y", None)], inits, check=False)


# -- registration and docs ---------------------------------------------------------------------


def test_every_pass_is_registered_with_a_documented_config() -> None:
    registry = get_registry()
    for name in NEW_PASSES:
        cls = registry.pass_(name)
        assert cls.description
        source = textwrap.dedent(inspect.getsource(cls.Config))
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        fields = [s.target.id for s in body if isinstance(s, ast.AnnAssign)]
        assert fields == list(cls.Config.model_fields), name
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign):
                doc = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), f"{name}.{stmt.target.id}"


def test_docs_name_every_pass_and_parameter() -> None:
    text = (REPO / "docs" / "passes.md").read_text(encoding="utf-8")
    for name, cls in get_registry().passes.items():
        if cls.__module__.startswith("gpuxc_passes"):
            assert f"`{name}`" in text, name
            for field in cls.Config.model_fields:
                assert f"`{field}`" in text, f"{name}.{field}"


def test_importing_the_passes_imports_no_heavy_library() -> None:
    import subprocess

    code = "import sys, gpuxc_passes; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('onnxruntime', 'onnxsim', 'onnxslim', 'onnxconverter_common', 'onnx_ir')))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- exotic graphs: never a crash --------------------------------------------------------------


def exotic_models() -> dict[str, tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]]:
    x3 = np.array([0.5, -1.0, 2.0], np.float32)
    return {
        "with_if": (models.with_if(), [{"cond": np.array(c), "x": x3} for c in (True, False)]),
        "constant_weights": (models.constant_weights(), [rng_inputs(x=(1, 8))]),
        "ml_domain": (models.ml_domain(), [rng_inputs(x=(3, 4))]),
        "scalar_input": (models.scalar_input(), [{"scale": np.array(1.5, np.float32), "x": x3.repeat(2)[:4]}]),
        "dynamic_rank": (dynamic_rank_model(), [rng_inputs(x=(2, 4))]),
        "unknown_dims": (unknown_dims_model(), [rng_inputs(x=(2, 5))]),
    }


PASS_CASES = {
    "simplify": ({}, "fp32"),
    "fold-constants": ({}, "fp32"),
    "fp16": ({}, "fp16"),
    "quantize-dynamic": ({}, "int8"),
    "quantize-static": ({"random": True, "samples": 32}, "int8"),
    "ort-format": ({}, "fp32"),
    "transformer-fusion": ({}, "fp32"),
    "quantize-int4": ({}, "int8"),  # small weights: skipped (accuracy on tiny weights is the build gate's job)
}


@pytest.mark.parametrize("model_name", list(exotic_models()))
@pytest.mark.parametrize("pass_name", list(PASS_CASES))
def test_exotic_graphs_never_crash_a_pass(manager, ctx, pass_name: str, model_name: str) -> None:
    params, precision = PASS_CASES[pass_name]
    source, samples = exotic_models()[model_name]
    out, record = apply(manager, ctx, source, pass_name, params, required=False)
    assert record.status in ("applied", "unchanged", "skipped")
    if record.status != "skipped":
        result = manager.artifacts["model.ort"] if pass_name == "ort-format" else out
        for inputs in samples:
            assert_close(source, result, inputs, precision)
        return
    assert record.reason
    assert out is source
    # Required, the same pass either stays skipped (it does not apply) or fails naming itself.
    try:
        _, again = apply(manager, ctx, source, pass_name, params, required=True)
    except PassError as exc:
        assert str(exc).startswith(f"pass '{pass_name}' failed: ")
    else:
        assert (again.status, again.reason) == ("skipped", record.reason)
