"""``fp16``: float32 weights and computation to float16 (onnxconverter-common), fp32 inputs/outputs kept.

``onnxconverter_common.float16.convert_float_to_float16`` does the conversion; this pass
makes its result load in ONNX Runtime on real exports, where the converter alone does not
(measured with onnxconverter-common 1.16 on the magika model and on the fixtures):

- it retypes a ``Cast``-to-float32's output to float16 but leaves ``to`` at float32
  (every exported ``Cast(mask) -> float``): the ``to`` attribute is corrected;
- it relies on ``value_info`` for every value, which ONNX shape inference leaves out
  after ``ai.onnx.ml`` ops: missing element types are taken from ONNX Runtime's own
  type inference first;
- it misses values a subgraph reads from the outer scope, so ``If``/``Loop``/``Scan``
  nodes are kept in float32 (``block_control_flow``);
- it converts initializers that IR < 4 models also list as graph inputs while the
  input stays float32: those are dropped from the inputs (ONNX Runtime never exposes
  them as inputs) and the IR version raised to 4.

The result must load and run in ONNX Runtime CPU on generated inputs (``check``); its
agreement with the input model is recorded in the stats, and judged by the target's
verification against the build's tolerance.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, TensorProto, ValueInfoProto, helper

from gpuxc.errors import PassError
from gpuxc.passes import Pass, PassConfig, PassContext, PassResult, PassSkipped
from gpuxc.project.graph import iter_tensors
from gpuxc.project.model import infer_shapes, save_model
from gpuxc.project.preprocess_graph import PREFIX as PREPROCESSING_PREFIX
from gpuxc_passes._common import (
    check_inputs,
    check_outputs,
    has_float16,
    has_float32,
    is_large,
    op_counts,
    reason,
    run_model,
    subgraphs,
    summary,
)

# onnxconverter_common.float16.DEFAULT_OP_BLOCK_LIST (as of 1.16), written out so that the
# manifest records the list a build used (a unit test compares it with the installed one).
DEFAULT_OP_BLOCK_LIST = [
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer", "FeatureVectorizer",
    "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor", "Normalizer", "OneHotEncoder",
    "RandomUniformLike", "SVMClassifier", "SVMRegressor", "Scaler", "TreeEnsembleClassifier",
    "TreeEnsembleRegressor", "ZipMap", "NonMaxSuppression", "TopK", "RoiAlign", "Resize", "Range", "CumSum",
    "Min", "Max", "Upsample",
]  # fmt: skip
CONTROL_FLOW = {"If", "Loop", "Scan"}
TRUNCATION_WARNING = r"the float32 number .* will be truncated to"


class Fp16Config(PassConfig):
    keep_io_types: bool = True
    """Keep float32 model inputs and outputs (casts inside the graph): callers need not change."""
    op_block_list: list[str] = DEFAULT_OP_BLOCK_LIST
    """Op types left in float32 (default: onnxconverter-common's DEFAULT_OP_BLOCK_LIST)."""
    node_block_list: list[str] = []
    """Node names left in float32 (e.g. a numerically sensitive softmax or normalization)."""
    min_positive_val: float = 1e-7
    """Positive float32 constants smaller than this are raised to it (float16 would flush them to zero)."""
    max_finite_val: float = 1e4
    """Finite float32 constants larger in magnitude than this are clamped to it (float16 overflows at 65504)."""
    block_control_flow: bool = True
    """Keep If/Loop/Scan nodes and their subgraphs in float32 (the converter misses their outer-scope reads)."""
    block_preprocessing: bool = True
    """Keep image preprocessing's ``gpuxc_pre/`` nodes in float32: pixel arithmetic stays exact, and the
    converter mistypes their size computation (a Cast-to-float32 meeting a converted constant)."""
    check: bool = True
    """Run the result in ONNX Runtime CPU on generated inputs and record its agreement with the input model."""
    check_shapes: dict[str, list[int]] = {}
    """Input name -> full shape for the check; unknown dims not given take small values (batch 1)."""


class Fp16(Pass[Fp16Config]):
    name = "fp16"
    description = "float32 to float16 weights and compute (onnxconverter-common), fp32 I/O kept"
    Config = Fp16Config

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        from onnxconverter_common import float16

        work = ModelProto()
        work.CopyFrom(model)
        stats: dict[str, Any] = {}
        dropped = _drop_initializer_inputs(work)
        work = _infer_shapes(work, ctx)
        if not has_float32(work):
            raise PassSkipped("no float32 weights or computation to convert")
        if dropped:
            stats["initializer_inputs_dropped"] = dropped
        typed = _complete_types(work)
        if typed:
            stats["types_from_onnxruntime"] = typed
        blocked_nodes = list(self.config.node_block_list)
        if self.config.block_control_flow:
            blocked_nodes += [n.name for n in work.graph.node if n.op_type in CONTROL_FLOW and n.name]
        if self.config.block_preprocessing:
            blocked_nodes += [n.name for n in work.graph.node if n.name.startswith(PREPROCESSING_PREFIX)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("always", message=TRUNCATION_WARNING, category=UserWarning)
            converted = float16.convert_float_to_float16(
                work,
                min_positive_val=self.config.min_positive_val,
                max_finite_val=self.config.max_finite_val,
                keep_io_types=self.config.keep_io_types,
                disable_shape_infer=True,  # done above, without the 2 GB limit of the in-memory form
                op_block_list=self.config.op_block_list,
                node_block_list=blocked_nodes,
            )
        clamped = 0
        for item in caught:  # only the truncation notices are ours to count; re-raise the rest
            if item.category is UserWarning and "will be truncated to" in str(item.message):
                clamped += 1
            else:
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
        stats["tensors_clamped"] = clamped
        stats["casts_fixed"] = _fix_casts(converted.graph)
        # The converter leaves value_info behind for the names its casts replaced.
        produced = {o for n in converted.graph.node for o in n.output}
        for value in [v for v in converted.graph.value_info if v.name not in produced]:
            converted.graph.value_info.remove(value)
        if not has_float16(converted):
            raise PassSkipped("every float32 op is in op_block_list/node_block_list: nothing to convert")
        counts = op_counts(converted)
        stats["casts"] = counts.get("Cast", 0) - op_counts(model).get("Cast", 0)
        stats["float16_tensors"] = sum(1 for t in iter_tensors(converted.graph) if t.data_type == TensorProto.FLOAT16)
        if self.config.check:
            inputs, expected = check_inputs(model, self.config.check_shapes, ctx)
            halves = {v.name for v in converted.graph.input if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
            feeds = {k: v.astype(np.float16) if k in halves else v for k, v in inputs.items()}
            try:
                actual = run_model(converted, feeds, ctx.workdir, "fp16")
            except Exception as exc:
                raise PassError(f"the float16 model does not run in ONNX Runtime CPU: {reason(exc)}") from None
            stats["check"] = {"shapes": {k: list(v.shape) for k, v in inputs.items()},
                              **summary(check_outputs(expected, actual, "fp16"))}  # fmt: skip
        return PassResult(model=converted, modified=True, stats=stats)


def _infer_shapes(model: ModelProto, ctx: PassContext) -> ModelProto:
    """ONNX shape inference; through files for a model over 2 GB (the in-memory form cannot)."""
    if not is_large(model):
        return infer_shapes(model)
    src = ctx.workdir / "fp16-shapes-in.onnx"
    dst = ctx.workdir / "fp16-shapes-out.onnx"
    save_model(model, src)
    try:
        onnx.shape_inference.infer_shapes_path(str(src), str(dst), check_type=False, strict_mode=False)
        return onnx.load(str(dst))
    except Exception:
        return model


def _drop_initializer_inputs(model: ModelProto) -> list[str]:
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    dropped = [v.name for v in graph.input if v.name in weights]
    if dropped:
        keep = [v for v in graph.input if v.name not in weights]
        del graph.input[:]
        graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    return dropped


def _complete_types(model: ModelProto) -> int:
    """Element types of main-graph values ONNX shape inference left untyped, from ONNX Runtime."""
    graph = model.graph
    known = {v.name for v in (*graph.value_info, *graph.input, *graph.output)} | {t.name for t in graph.initializer}
    missing = [o for n in graph.node for o in n.output if o and o not in known]
    if not missing or is_large(model):
        return 0
    from gpuxc.ort_session import open_session

    probe = ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(ValueInfoProto(name=name) for name in missing)
    try:
        session = open_session(probe.SerializeToString(), level="none")
    except Exception:
        return 0  # the check after conversion reports what is wrong
    added = 0
    wanted = set(missing)
    for out in session.get_outputs():
        if out.name in wanted and out.type.startswith("tensor(") and out.type.endswith(")"):
            elem = _ORT_TYPES.get(out.type[len("tensor(") : -1])
            if elem is not None:
                graph.value_info.append(helper.make_tensor_value_info(out.name, elem, None))
                added += 1
    return added


_ORT_TYPES = {
    "float": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "double": TensorProto.DOUBLE,
    "bfloat16": TensorProto.BFLOAT16, "int8": TensorProto.INT8, "int16": TensorProto.INT16,
    "int32": TensorProto.INT32, "int64": TensorProto.INT64, "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16, "uint32": TensorProto.UINT32, "uint64": TensorProto.UINT64,
    "bool": TensorProto.BOOL, "string": TensorProto.STRING,
}  # fmt: skip


def _fix_casts(graph: GraphProto) -> int:
    """``Cast(to=float)`` nodes whose output the converter retyped to float16: cast to float16."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output)}
    fixed = 0
    for node in graph.node:
        if node.op_type == "Cast":
            to = next((a for a in node.attribute if a.name == "to"), None)
            if to is not None and to.i == TensorProto.FLOAT and types.get(node.output[0]) == TensorProto.FLOAT16:
                to.i = TensorProto.FLOAT16
                fixed += 1
        fixed += sum(_fix_casts(sub) for sub in subgraphs(node))
    return fixed
