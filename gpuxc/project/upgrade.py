"""Old models made current: IR 3 initializer-inputs dropped, opsets below 7 upgraded to UPGRADE_OPSET.

Classic model-zoo networks and old PyTorch exports are IR 3 (initializers also listed as graph
inputs) and often opset 1–6. ONNX Runtime implements no operator below opset 7 (``Add-6`` with
its ``broadcast`` attribute, ``BatchNormalization-6``, ``AveragePool-1``), and the
initializer-inputs become "required inputs" once a pass re-saves the model. So the model every
pass and target works on (``LoadedModel.proto``) is the upgraded one, while the reference
outputs come from the *source* file (gpuxc/project/reference_runtime.py): a converted model is
never verified against itself.

``onnx.version_converter`` is right for almost every op; where it is known to be wrong the
repair is here and recorded. PRelu-6 applied a 1-D slope per channel (axis 1); PRelu-7+
broadcasts the slope NumPy-style from the right, so a ``[C]`` slope on ``[N, C, L]`` must
become ``[C, 1]``. Measured on ONNX's own old-opset test folders: with the IR step first, every
case converts to opset 7–17 and runs correctly in ONNX Runtime except per-channel PRelu, which
this repair fixes; without the IR step the converter itself fails on ``Pad`` ("in initializer
but not in graph input").
"""

from __future__ import annotations

import re
from collections import Counter

import onnx
from onnx import ModelProto, helper, numpy_helper
from pydantic import BaseModel, ConfigDict

from gpuxc.errors import ModelError, first_line
from gpuxc.project.graph import opset_map

# ONNX Runtime implements no operator from opsets below 7 (FIELD_NOTES).
MIN_DEFAULT_OPSET = 7
# The opset old models are upgraded to: the one FIELD_NOTES measured the converter on, within
# every target's range (DirectML takes 7–20) and past per-channel quantization's 13.
UPGRADE_OPSET = 17
# Binary ops whose opset < 7 versions took ``broadcast``/``axis`` attributes.
LEGACY_BROADCAST_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor", "Equal", "Greater", "Less"}
# The checker takes a ModelProto only under protobuf's 2 GB limit.
CHECK_IN_MEMORY_BYTES = 1_900_000_000
# IR 4 is the first that lets an initializer not be a graph input.
IR_WITHOUT_INITIALIZER_INPUTS = 4


class ModelUpgrade(BaseModel):
    """How the model gpuxc compiled differs from the source file (recorded in the manifest)."""

    model_config = ConfigDict(extra="forbid")

    from_opset: int | None = None  # set when the default-domain opset was upgraded
    to_opset: int | None = None
    from_ir: int
    to_ir: int
    initializer_inputs_dropped: int = 0
    converted_ops: list[str] = []  # op types whose definition changed between the two opsets
    repairs: list[str] = []  # what gpuxc fixed after onnx.version_converter, one line each

    def summary(self) -> str:
        parts = []
        if self.from_opset is not None:
            parts.append(f"upgraded from opset {self.from_opset} to {self.to_opset} by onnx.version_converter")
        if self.initializer_inputs_dropped:
            parts.append(f"{self.initializer_inputs_dropped} initializer(s) dropped from the graph inputs (IR "
                         f"{self.from_ir} -> {self.to_ir})")  # fmt: skip
        return "; ".join(parts)

    def suspects(self) -> str:
        """For an error about the upgraded model: the ops the converter rewrote ("" when no opset changed)."""
        if self.from_opset is None:
            return ""
        ops = ", ".join(self.converted_ops) or "no op"
        upgraded = f"the source was upgraded from opset {self.from_opset} to {self.to_opset}"
        return f"{upgraded} and onnx.version_converter rewrote {ops}"


def needs_upgrade(proto: ModelProto) -> bool:
    opset = opset_map(proto).get("")
    return (opset is not None and opset < MIN_DEFAULT_OPSET) or _initializer_inputs(proto) > 0


def upgrade(proto: ModelProto, where: str) -> tuple[ModelProto, ModelUpgrade | None]:
    """``proto`` made current (a copy), and what was done; ``(proto, None)`` when nothing was needed.

    ``where`` (the model's path) starts every error message.
    """
    if not needs_upgrade(proto):
        return proto, None
    model = ModelProto()
    model.CopyFrom(proto)
    record = ModelUpgrade(from_ir=model.ir_version, to_ir=model.ir_version)
    record.initializer_inputs_dropped = _drop_initializer_inputs(model)
    opset = opset_map(model).get("")
    if opset is not None and opset < MIN_DEFAULT_OPSET:
        slopes_per_channel = _per_channel_prelu_slopes(model)
        record.repairs = _repair_axis_broadcast(model)
        try:
            model = onnx.version_converter.convert_version(model, UPGRADE_OPSET)
        except Exception as exc:
            why = _converter_message(exc, model)
            raise ModelError(f"{where}: cannot upgrade opset {opset} to {UPGRADE_OPSET} with onnx.version_converter: "
                             f"{why}", hint="re-export the model at opset 7 or later") from None  # fmt: skip
        record.from_opset, record.to_opset = opset, UPGRADE_OPSET
        record.converted_ops = converted_ops(proto, opset, UPGRADE_OPSET)
        record.repairs += _repair_prelu(model, slopes_per_channel)
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import), True))
    record.to_ir = model.ir_version
    if model.ByteSize() < CHECK_IN_MEMORY_BYTES:  # the source file itself was checked by load_model
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise ModelError(f"{where}: the upgraded model is invalid: {first_line(exc)}",
                             hint="re-export the model at opset 7 or later") from None  # fmt: skip
    return model, record


def converted_ops(proto: ModelProto, old: int, new: int) -> list[str]:
    """Op types of ``proto`` (default domain) whose definition differs between opsets ``old`` and ``new``."""
    changed = set()
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            before = onnx.defs.get_schema(node.op_type, old).since_version
            after = onnx.defs.get_schema(node.op_type, new).since_version
        except onnx.defs.SchemaError:
            continue  # an op that did not exist yet (or any more): the converter says so itself
        if before != after:
            changed.add(node.op_type)
    return sorted(changed)


def _converter_message(exc: Exception, model: ModelProto) -> str:
    """The converter's C++ assertion, as one line naming the op (its own text has printf holes)."""
    removed = Counter(n.op_type for n in model.graph.node
                      if n.domain in ("", "ai.onnx") and not _defined_at(n.op_type, UPGRADE_OPSET))  # fmt: skip
    if removed:
        ops = ", ".join(f"{op} x{count}" for op, count in sorted(removed.items()))
        return f"op {ops} has no definition at opset {UPGRADE_OPSET} (removed from the ONNX standard)"
    text = first_line(exc)
    adapter = re.search(r"adapt_([a-z0-9]+)_(\d+)_(\d+)", text)
    detail = text.split("failed: ", 1)[-1].strip()
    if adapter:
        op = next((n.op_type for n in model.graph.node if n.op_type.lower() == adapter.group(1)), adapter.group(1))
        return f"op {op} (opset {adapter.group(2)} -> {adapter.group(3)}): {detail}"
    return detail


def _defined_at(op_type: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, opset)
    except onnx.defs.SchemaError:
        return False
    return True


def _initializer_inputs(proto: ModelProto) -> int:
    if proto.ir_version >= IR_WITHOUT_INITIALIZER_INPUTS:
        return 0  # allowed from IR 4 on, and then they are optional inputs the model's author chose
    initializers = {t.name for t in proto.graph.initializer}
    return sum(1 for v in proto.graph.input if v.name in initializers)


def _drop_initializer_inputs(model: ModelProto) -> int:
    dropped = _initializer_inputs(model)
    if dropped:
        initializers = {t.name for t in model.graph.initializer}
        keep = [v for v in model.graph.input if v.name not in initializers]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, IR_WITHOUT_INITIALIZER_INPUTS)
    return dropped


def _repair_axis_broadcast(model: ModelProto) -> list[str]:
    """Legacy ``broadcast=1, axis=k`` on binary ops (opset < 7) made trailing: the converter
    only knows NumPy's right-aligned broadcasting and refuses or misreads the rest.

    ``B`` of rank ``m`` broadcast from axis ``k`` of an ``A`` of rank ``r`` means ``B``'s dims sit
    at ``k .. k+m-1``; appending ``r - k - m`` unit dims to ``B`` says the same right-aligned. An
    initializer ``B`` is reshaped, any other gets an ``Unsqueeze`` in front.
    """
    ranks = _ranks(model)
    initializers = {t.name: t for t in model.graph.initializer}
    repairs: list[str] = []
    nodes = list(model.graph.node)
    added: list[tuple[int, onnx.NodeProto]] = []
    for index, node in enumerate(nodes):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in LEGACY_BROADCAST_OPS or attrs.get("broadcast") != 1 or "axis" not in attrs:
            continue
        a_rank, b_rank = ranks.get(node.input[0]), ranks.get(node.input[1])
        if a_rank is None or b_rank is None:
            continue
        axis = attrs["axis"] + a_rank if attrs["axis"] < 0 else attrs["axis"]
        pad = a_rank - axis - b_rank
        for i, attr in enumerate(node.attribute):
            if attr.name == "axis":
                del node.attribute[i]
                break
        if pad <= 0:
            continue  # already right-aligned: dropping the attribute changes nothing
        name = node.input[1]
        tensor = initializers.get(name)
        if tensor is not None and sum(1 for n in nodes for i in n.input if i == name) == 1:
            values = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(values.reshape(list(values.shape) + [1] * pad), name))
        else:
            unsqueezed = f"{name}__gpuxc_axis_broadcast_{index}"
            added.append((index, helper.make_node("Unsqueeze", [name], [unsqueezed],
                                                  axes=list(range(b_rank, b_rank + pad)))))  # fmt: skip
            node.input[1] = unsqueezed
        repairs.append(f"{node.op_type} '{node.name or node.output[0]}': broadcast from axis {axis} made "
                       f"right-aligned ({pad} trailing unit dim(s) on '{name}')")  # fmt: skip
    for offset, (index, unsqueeze) in enumerate(added):
        model.graph.node.insert(index + offset, unsqueeze)
    return repairs


def _per_channel_prelu_slopes(model: ModelProto) -> dict[str, int]:
    """PRelu slope initializers of rank 1 and size > 1 -> the rank of the PRelu's input (before conversion)."""
    ranks = _ranks(model)
    initializers = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "PRelu" or len(node.input) < 2:
            continue
        slope = initializers.get(node.input[1])
        rank = ranks.get(node.input[0])
        if slope is not None and len(slope.dims) == 1 and slope.dims[0] > 1 and rank is not None and rank > 2:
            found[slope.name] = rank
    return found


def _repair_prelu(model: ModelProto, slopes: dict[str, int]) -> list[str]:
    """Reshape per-channel slopes ``[C]`` to ``[C, 1, ...]``: PRelu-6's per-channel meaning at opset 7+."""
    repairs = []
    for i, tensor in enumerate(model.graph.initializer):
        rank = slopes.get(tensor.name)
        if rank is None or len(tensor.dims) != 1:
            continue
        values = numpy_helper.to_array(tensor)
        fixed = numpy_helper.from_array(values.reshape([values.shape[0]] + [1] * (rank - 2)), tensor.name)
        model.graph.initializer[i].CopyFrom(fixed)
        repairs.append(f"PRelu slope '{tensor.name}' reshaped [{values.shape[0]}] -> per channel on axis 1 (PRelu-6 "
                       "semantics; onnx.version_converter keeps [C], which broadcasts on the last axis)")  # fmt: skip
    return repairs


def _ranks(model: ModelProto) -> dict[str, int]:
    """Known ranks of the graph's tensors (shape inference on a copy; old models may not infer)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            ranks[value.name] = len(tensor_type.shape.dim)
    return ranks
