"""Mixed precision in an OpenVINO IR: stable node names, and chosen nodes kept in f32 under a bf16/f16 hint.

The keep mechanism is the IR attribute the CPU plugin really reads. Its graph builder marks a node
"keep original precision" when the op carries OpenVINO's ``DisablePrecisionConversion`` runtime
attribute with conversion to f16 disabled (``is_conversion_disabled(op, f16)``), and
``Graph::EnforceInferencePrecision`` then leaves that node in f32 whatever the hint, bf16 included.
Python cannot create that attribute (a string set in ``rt_info`` is not it: the plugin fails with
"Bad as from string", and ``save_model`` does not write strings), but the IR reader rebuilds it from
``<rt_info><attribute name="DisablePrecisionConversion" version="0" value="dynamic:f16"/>`` in
model.xml. So the target writes the IR, then adds that element to the kept layers: the precision
lives in the IR, and the runner needs nothing. Measured (tests/plugins/gpuxc_openvino/test_precision.py):
the marked node runs f32 (``runtimePrecision`` of the compiled model) while the others stay bf16.
Only ``dynamic:f16`` works: the plugin asks about conversion from any type to f16.

Names: ``openvino.convert_model`` fuses BatchNormalization into Conv and names the result after the
Multiply it folded (``Multiply_9785``, from a process-wide counter), so a node name from one
conversion means nothing in the next. Before those fusions the ONNX frontend names each compute op
after its ONNX node (``p2o.Conv.3/WithoutBiases``). The fusions keep the compute ops' order and
their weight sizes (a few disappear: attention's MatMuls become ScaledDotProductAttention), so the
converted model's compute ops are renamed after the frontend's, matched in order; NNCF's ignored
scope, the keep attribute, the sensitivity ranking and the manifest then all speak of ONNX node
names.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

# Ops the ranking compares and the repair keeps back: the ones bf16/int8 lower for speed.
COMPUTE_TYPES = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                           "GroupConvolutionBackpropData", "MatMul"})  # fmt: skip
# The runtime attribute, as the IR reader spells it.
KEEP_ATTRIBUTE = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}
_FRONTEND_SUFFIXES = ("/WithoutBiases",)  # what the ONNX frontend appends to a Conv with bias


def compute_ops(model: Any) -> list[Any]:
    """The compute ops of an ``openvino.Model``, in topological order."""
    return [op for op in model.get_ordered_ops() if op.get_type_name() in COMPUTE_TYPES]


def name_after_onnx(model: Any, onnx_path: Path) -> bool:
    """Rename ``model``'s compute ops after the ONNX nodes they came from; False (nothing renamed)
    when the frontend's compute ops do not line up with the converted model's."""
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("onnx")
    raw = compute_ops(frontend.convert(frontend.load(str(onnx_path))))
    final = compute_ops(model)
    ours = {op.get_name() for op in final}
    # The bias Add of a Conv the fusions leave alone keeps the ONNX node's name: the Conv then keeps
    # the frontend's suffixed one, or NNCF would find two ops of one name (and rename one of them).
    taken = {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_name() not in ours}
    names = []
    position = 0
    for after in final:
        # In order; a frontend op the fusions absorbed (attention's MatMuls into ScaledDotProductAttention)
        # is passed over. The key tells weights from activations, so the passing cannot slip a slot.
        key = _key(after)
        while position < len(raw) and _key(raw[position]) != key:
            position += 1
        if position == len(raw):
            return False
        name = raw[position].get_friendly_name()
        position += 1
        for suffix in _FRONTEND_SUFFIXES:
            if name.removesuffix(suffix) not in taken:
                name = name.removesuffix(suffix)
        names.append(name)
    if len(set(names)) != len(names):
        return False
    for op, name in zip(final, names, strict=True):
        op.set_friendly_name(name)  # outputs are known by their tensor names, which stay
    return True


def keep_in_f32(xml_path: Path, names: list[str]) -> list[str]:
    """Mark the layers named ``names`` in the IR at ``xml_path`` to run in f32 under any inference
    precision hint; the names no layer has."""
    tree = ET.parse(xml_path)  # our own IR, just written by openvino.save_model
    wanted = set(names)
    found = set()
    for layer in tree.getroot().iter("layer"):
        name = layer.get("name")
        if name not in wanted:
            continue
        found.add(name)
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.Element("rt_info")
            layer.insert(1 if layer.find("data") is not None else 0, rt_info)  # where save_model puts it
        if not any(a.get("name") == KEEP_ATTRIBUTE["name"] for a in rt_info.iter("attribute")):
            ET.SubElement(rt_info, "attribute", KEEP_ATTRIBUTE)
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return [n for n in names if n not in found]


def with_feeders(model: Any, names: list[str]) -> list[str]:
    """``names`` and the ops that feed them from the previous compute op on (elementwise ops,
    ScaledDotProductAttention, MVN...): the ranking charges their bf16 error to the compute op they
    feed, so keeping only that op would leave the error in place. Constant paths are left out."""
    wanted = set(names)
    out = list(names)
    seen: set[str] = set()
    stack = [v for op in model.get_ordered_ops() if op.get_friendly_name() in wanted for v in op.input_values()]
    while stack:
        value = stack.pop()
        node = value.get_node()
        kind = node.get_type_name()
        if node.get_name() in seen or kind in COMPUTE_TYPES or kind in ("Parameter", "Constant"):
            continue
        seen.add(node.get_name())
        if _constant(value, 6):
            continue
        if node.get_friendly_name() not in wanted:
            out.append(node.get_friendly_name())
            wanted.add(node.get_friendly_name())
        stack.extend(node.input_values())
    return out


def runtime_precisions(compiled: Any) -> dict[str, str]:
    """Each original layer's execution precision in a compiled model (``runtimePrecision`` of the
    plugin's node that holds it): the proof that a hint and the keep attribute did what was meant."""
    out: dict[str, str] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "runtimePrecision" not in info or "originalLayersNames" not in info:
            continue
        precision = info["runtimePrecision"].astype(str)
        for name in info["originalLayersNames"].astype(str).split(","):
            out.setdefault(name, precision)
    return out


def _key(op: Any) -> tuple[str, int, bool]:
    """What the fusions keep of a compute op: its type, the size of its second input (they may transpose
    a MatMul's weights, never resize them), and whether that input is weights or an activation."""
    if op.get_input_size() < 2:
        return op.get_type_name(), -1, False
    shape = op.input(1).get_partial_shape()
    size = int(np.prod(op.input(1).get_shape())) if shape.is_static else -1
    return op.get_type_name(), size, _constant(op.input_value(1), 6)


def _constant(value: Any, depth: int) -> bool:
    """Whether ``value`` is computed from constants only (weights, possibly decompressed or folded)."""
    node = value.get_node()
    if node.get_type_name() == "Constant":
        return True
    if depth == 0 or node.get_input_size() == 0:
        return False
    return all(_constant(v, depth - 1) for v in node.input_values())
