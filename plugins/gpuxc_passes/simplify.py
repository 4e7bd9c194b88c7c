"""``simplify``: onnxsim or onnxslim (constant folding, shape-computation folding, dead-node
and redundant-op elimination), then a check that the result computes what the input did.

The check runs both models in ONNX Runtime (CPU, no graph optimization) on deterministic
generated inputs and compares every output at the fp32 tolerance of ``gpuxc.bundle.compare``;
a difference, or a simplifier that raises, fails the pass (a target that plans it as
optional then records it as skipped, with the reason, and goes on with the input model).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from onnx import ModelProto

from gpuxc.errors import PassError, first_line
from gpuxc.passes import Pass, PassConfig, PassContext, PassResult, PassSkipped
from gpuxc_passes._common import (
    check_inputs,
    check_outputs,
    gigabytes,
    is_large,
    op_counts,
    op_diff,
    reason,
    run_model,
    summary,
)

INSTALL_HINTS = {
    "onnxsim": "pip install onnxsim (or gpuxc[simplify]); it has wheels for common platforms only",
    "onnxslim": "pip install onnxslim",
}


class SimplifyConfig(PassConfig):
    backend: Literal["onnxsim", "onnxslim"] = "onnxsim"
    """Simplifier: onnxsim (C++, thorough, models up to 2 GB) or onnxslim (pure Python)."""
    check: bool = True
    """Compare the simplified model's outputs with the input model's on generated inputs (fp32 tolerance)."""
    check_shapes: dict[str, list[int]] = {}
    """Input name -> full shape for the check; unknown dims not given take small values (batch 1)."""


class Simplify(Pass[SimplifyConfig]):
    name = "simplify"
    description = "onnxsim/onnxslim graph simplification, checked against the input model"
    Config = SimplifyConfig

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        backend = self.config.backend
        try:
            module = importlib.import_module(backend)
        except ImportError as exc:
            raise PassSkipped(f"{backend} is not installed ({first_line(exc)}): {INSTALL_HINTS[backend]}") from None
        if backend == "onnxsim" and is_large(model):
            raise PassSkipped(
                f"onnxsim cannot simplify a model over 2 GB (protobuf limit); this one is {gigabytes(model)}"
            )
        try:
            simplified = _simplify(module, backend, model)
        except Exception as exc:
            raise PassError(f"{backend} failed: {type(exc).__name__}: {first_line(exc)}") from exc
        # Simplifiers rebuild the ModelProto; keep the metadata the input carried.
        if not simplified.metadata_props and model.metadata_props:
            simplified.metadata_props.extend(model.metadata_props)
        stats = {
            "backend": backend,
            "backend_version": str(getattr(module, "__version__", "unknown")),
            **op_diff(model, simplified),
        }
        if _structure(model) == _structure(simplified):  # value_info or doc strings alone are no change
            return PassResult(model=model, modified=False, stats=stats)
        if self.config.check:
            inputs, expected = check_inputs(model, self.config.check_shapes, ctx)
            try:
                actual = run_model(simplified, inputs, ctx.workdir, "simplified")
            except Exception as exc:
                raise PassError(f"the {backend} result does not run in ONNX Runtime: {reason(exc)}") from None
            report = check_outputs(expected, actual, "fp32")
            if report["status"] != "passed":
                raise PassError(f"the {backend} result differs from the input model: {report['failures'][0]}")
            stats["check"] = {"shapes": {k: list(v.shape) for k, v in inputs.items()}, **summary(report)}
        return PassResult(model=simplified, modified=True, stats=stats)


def _structure(model: ModelProto) -> tuple[object, ...]:
    inits = sorted((t.name, t.data_type, tuple(t.dims)) for t in model.graph.initializer)
    return op_counts(model), inits, [n.op_type for n in model.graph.node]


def _simplify(module: Any, backend: str, source: ModelProto) -> ModelProto:
    # Both libraries may edit the proto they are given (shape inference in place): give a copy.
    model = ModelProto()
    model.CopyFrom(source)
    if backend == "onnxslim":
        return module.slim(model)
    simplify = module.simplify
    kwargs: dict[str, object] = {"check_n": 0}
    accepted = inspect.signature(simplify).parameters
    if "certify" in accepted:
        kwargs["certify"] = False  # newer onnxsim may try a Z3 proof by default: we check numerically
    simplified, _ = simplify(model, **kwargs)
    return simplified
