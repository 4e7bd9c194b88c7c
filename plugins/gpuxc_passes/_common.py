"""Helpers the built-in passes share: model facts, generated inputs, running and comparing.

Only NumPy, onnx and gpuxc are imported here; onnxruntime is imported by the functions
that need it, when a pass runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

from gpuxc.bundle.compare import DEFAULT_TOLERANCE, compare
from gpuxc.errors import GpuxcError, PassError, first_line
from gpuxc.passes import PassContext
from gpuxc.project.graph import iter_nodes, iter_tensors
from gpuxc.project.model import ModelSignature, describe, save_model
from gpuxc.project.reference import DEFAULT_DIM, DEFAULT_SPATIAL, FALLBACK_SIZES, generate, index_bounds

# A protobuf cannot be serialized past 2 GiB; gpuxc.project.model.save_model moves weights to an
# external data file above this size, and in-memory tools (onnxsim, shape inference) fail.
LARGE_MODEL_BYTES = 1_800_000_000
# Unknown dims for output checks: small first (fast), then the reference's sizes and fallbacks.
CHECK_SIZES = [(4, 32), (DEFAULT_DIM, DEFAULT_SPATIAL), *FALLBACK_SIZES]
# Unknown dims for random calibration: the reference's own sizes first, so the quantizer sees
# activations like those verification will.
CALIBRATION_SIZES = [(DEFAULT_DIM, DEFAULT_SPATIAL), *FALLBACK_SIZES]


def is_large(model: ModelProto) -> bool:
    return model.ByteSize() > LARGE_MODEL_BYTES


def gigabytes(model: ModelProto) -> str:
    return f"{model.ByteSize() / 1e9:.1f} GB"


def signature_of(model: ModelProto) -> ModelSignature:
    """The model's signature (inputs, outputs, opsets) without a file behind it."""
    return describe(model, sha256="", size_bytes=model.ByteSize(), external=[])


def subgraphs(node: NodeProto) -> Iterator[GraphProto]:
    """The graphs a node holds as attributes (If branches, Loop and Scan bodies), in order."""
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def op_counts(model: ModelProto) -> Counter[str]:
    """``domain:Op`` (or ``Op`` for the default domain) -> count, subgraphs included."""
    return Counter(
        f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in iter_nodes(model.graph)
    )


def op_diff(before: ModelProto, after: ModelProto) -> dict[str, dict[str, int]]:
    a, b = op_counts(before), op_counts(after)
    return {"ops_removed": dict(sorted((a - b).items())), "ops_added": dict(sorted((b - a).items()))}


def has_float32(model: ModelProto) -> bool:
    """Whether any weight, constant or typed value of the model is float32."""
    if any(t.data_type == TensorProto.FLOAT for t in iter_tensors(model.graph)):
        return True
    graph = model.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    return any(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in values if v.type.HasField("tensor_type"))


def has_float16(model: ModelProto) -> bool:
    """Whether any weight, graph input/output or computed value is float16."""
    if any(t.data_type == TensorProto.FLOAT16 for t in iter_tensors(model.graph)):
        return True
    graph = model.graph
    produced = {o for n in graph.node for o in n.output}
    values = [*graph.input, *graph.output, *(v for v in graph.value_info if v.name in produced)]
    if any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in values if v.type.HasField("tensor_type")):
        return True
    return any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)
        for n in iter_nodes(graph)
    )


def run_model(model: ModelProto, inputs: dict[str, np.ndarray], workdir: Path, stem: str) -> dict[str, np.ndarray]:
    """ONNX Runtime CPU with graph optimizations off (the model's own arithmetic); outputs by name.

    Failures are a ``PassError`` and ONNX Runtime's own log stays quiet: a pass probing
    input sizes expects some to fail.
    """
    from gpuxc.ort_session import run_onnxruntime

    source: Path | bytes = model.SerializeToString() if not is_large(model) else workdir / f"{stem}.onnx"
    if isinstance(source, Path):
        save_model(model, source)
    return run_onnxruntime(source, inputs, level="none", log_level=4, load_error=PassError, run_error=PassError,
                           what="inputs")  # fmt: skip


def generated_inputs(
    model: ModelProto,
    signature: ModelSignature,
    given: dict[str, list[int]],
    workdir: Path,
    sizes: list[tuple[int, int]],
    param: str,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Generated inputs the model runs on, and its outputs: unknown dims take ``sizes`` in turn.

    Raises ``PassError`` when the model fails at every size, naming the shapes tried.
    """
    from gpuxc.project.calibration import resolve_model_shapes

    bounds = index_bounds(model)
    tried: list[dict[str, list[int]]] = []
    first: GpuxcError | None = None
    for defaults in sizes:
        shapes = resolve_model_shapes(signature, given, defaults)
        if shapes in tried:
            continue
        tried.append(shapes)
        inputs = generate(signature, shapes, seed, bounds)
        try:
            return inputs, run_model(model, inputs, workdir, "source")
        except GpuxcError as exc:
            first = first or exc
    assert first is not None
    raise PassError(
        f"the input model does not run on generated inputs {tried[0]} ({first.message}); "
        f"give the input shapes with the pass parameter '{param}'"
    )


def check_inputs(
    model: ModelProto, check_shapes: dict[str, list[int]], ctx: PassContext
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inputs for a pass's check of its result, and the input model's outputs on them: shapes from
    the pass's ``check_shapes`` parameter, else the build's reference shapes (``CHECK_SIZES`` fill the rest)."""
    given = check_shapes or ctx.reference_shapes
    return generated_inputs(model, signature_of(model), given, ctx.workdir, CHECK_SIZES, "check_shapes")


def reason(exc: BaseException) -> str:
    """One line for ``exc``: a gpuxc error's message without its hint (the hint speaks of gpux.yml)."""
    return exc.message if isinstance(exc, GpuxcError) else first_line(exc)


def check_outputs(expected: dict[str, Any], actual: dict[str, Any], precision: str) -> dict[str, Any]:
    """``gpuxc.bundle.compare.compare`` at the default tolerance of ``precision``."""
    return compare(expected, actual, DEFAULT_TOLERANCE[precision])


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Worst metrics over all outputs of a ``compare`` report (for pass stats)."""
    outs = [m for m in report["outputs"].values() if "cosine" in m]
    out: dict[str, Any] = {"status": report["status"]}
    if outs:
        out["min_cosine"] = round(min(m["cosine"] for m in outs), 6)
        out["max_abs"] = float(f"{max(m['max_abs'] for m in outs):.3g}")
    return out


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[list[str]]:
    """Collect what onnxruntime.quantization logs (through the root logger) and prints, instead of
    letting it reach the console; yields the list of distinct messages (first lines)."""
    messages: list[str] = []
    folder = os.sep + os.path.join("onnxruntime", "quantization") + os.sep

    class Collect(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if folder not in record.pathname:
                return True
            text = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
            advice = "pre-processing" in text and "consider" in text  # ORT's standing advice, not about this model
            if text and not advice and text not in messages:
                messages.append(text[:300])
            return False

    loggers = [logging.getLogger(), *(logging.getLogger(f"onnxruntime.quantization.{m}") for m in
                                      ("shape_inference", "preprocess"))]  # fmt: skip
    collect = Collect()
    root = loggers[0]
    # logging.warning() on a root logger without handlers installs a console handler for good
    # (basicConfig): a placeholder handler keeps the quantizer from changing the process's logging.
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder:
        root.addHandler(placeholder)
    for logger in loggers:
        logger.addFilter(collect)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield messages
    finally:
        for logger in loggers:
            logger.removeFilter(collect)
        if placeholder:
            root.removeHandler(placeholder)


# Per-channel quantization writes DequantizeLinear with an `axis`, which needs opset 13.
PER_CHANNEL_MIN_OPSET = 13


def for_per_channel(model: ModelProto, per_channel: bool, stats: dict[str, Any]) -> ModelProto:
    """``model`` upgraded to opset 13 when per-channel quantization needs it (recorded in ``stats``).

    ONNX Runtime's quantizers do not upgrade it themselves and write graphs its own loader
    rejects (seen on paddle2onnx exports at opset 11/12). Verification checks the conversion.
    """
    import onnx.version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if not per_channel or opset is None or opset >= PER_CHANNEL_MIN_OPSET:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, PER_CHANNEL_MIN_OPSET)
    except Exception as exc:
        raise PassError(
            f"per-channel quantization needs opset {PER_CHANNEL_MIN_OPSET}, and upgrading from {opset} failed "
            f"({reason(exc)}); set per_channel: false"
        ) from exc
    stats["opset_upgraded"] = f"{opset} -> {PER_CHANNEL_MIN_OPSET}"
    return upgraded
