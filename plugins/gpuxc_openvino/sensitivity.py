"""Layer sensitivity of an OpenVINO variant, measured on the CPU plugin itself.

A bf16 hint is the plugin's doing, not the IR's, so the ONNX-on-ONNX-Runtime ranking
(gpuxc/build/sensitivity.py) cannot see it. Here the f32 IR under the f32 hint is the reference and
the variant's own IR under its own hint the lossy model (for NNCF int8 the quantized IR, whose
compute ops keep their names); every compute op's output is made a model output in both, and
their errors are compared like ``rank_nodes`` does: a node's own contribution is its output error
minus the largest error on the nearest compute ops upstream (what it inherited). Errors are relative
to each tensor's variation, not its norm: bf16 rounds relative to magnitude, and a large common
offset that a later op subtracts turns a small error in norm into a large one in what is left.

Only compute ops get outputs: an output on an elementwise op would change the plugin's choice (it
keeps the graph's tail, from each output back to the last Convolution/MatMul, in f32), while a
Convolution or MatMul is where the plugin's bf16 markup starts anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from gpuxc.build.sensitivity import NodeSensitivity, RelativeErrors, rank_by_error
from gpuxc_openvino.precision import COMPUTE_TYPES


def rank_ir(reference: Any, reference_hint: str, lossy: Any, lossy_hint: str,
            feeds: Iterable[dict[str, np.ndarray]]) -> list[NodeSensitivity]:  # fmt: skip
    """The lowered ops of ``lossy`` (an ``openvino.Model``) that ``reference`` also has, by name, most
    damaging first: its compute ops, and every op NNCF quantized (one fed by a FakeQuantize)."""
    lossy_ops = {op.get_friendly_name(): op for op in lowered_ops(lossy)}
    by_name: dict[str, Any] = {}
    for op in reference.get_ordered_ops():
        if op.get_friendly_name() in lossy_ops:
            by_name.setdefault(op.get_friendly_name(), op)  # a name given twice: the first holds it
    ref_ops = list(by_name.values())
    if not ref_ops:
        return []
    names = [op.get_friendly_name() for op in ref_ops]
    want_run = _probe(reference, [op.output(0) for op in ref_ops], reference_hint)
    got_run = _probe(lossy, [lossy_ops[n].output(0) for n in names], lossy_hint)
    errors = RelativeErrors(centred=True)
    for feed in feeds:
        want, got = want_run(feed), got_run(feed)
        for name, r, g in zip(names, want, got, strict=True):
            errors.add(name, r, g)
    upstream = _ranked_inputs(ref_ops)
    nodes = [(name, op.get_type_name(), name, upstream[name]) for name, op in zip(names, ref_ops, strict=True)]
    return rank_by_error(nodes, errors.errors())


def _probe(model: Any, outputs: list[Any], hint: str) -> Any:
    """A function running a copy of ``model`` with ``outputs`` added; returns their values in order."""
    import openvino as ov

    probe = model.clone()
    # clone() copies the graph: find the same ops in the copy, by name, and add their outputs (an
    # output already among the model's is not added again).
    by_name = {op.get_friendly_name(): op for op in probe.get_ordered_ops()}
    wanted = [(o.get_node().get_friendly_name(), o.get_index()) for o in outputs]
    probe.add_outputs([by_name[name].output(index) for name, index in wanted])
    produced = [(r.get_node().input_value(0).get_node().get_friendly_name(), r.get_node().input_value(0).get_index())
                for r in probe.outputs]  # fmt: skip
    compiled = ov.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    ports = [compiled.outputs[produced.index(w)] for w in wanted]
    inputs = {name for port in compiled.inputs for name in port.get_names()}

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = request.infer({k: v for k, v in feed.items() if k in inputs})
        return [np.array(results[port]) for port in ports]

    return run


def lowered_ops(model: Any) -> list[Any]:
    """The ops whose precision a variant lowers: compute ops (a bf16 hint starts there) and the ops
    NNCF quantized, which are more than convolutions (Add, Multiply, Interpolate, Concat...)."""
    return [op for op in model.get_ordered_ops()
            if op.get_type_name() in COMPUTE_TYPES or op.get_type_name() != "FakeQuantize" and any(
                v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())]  # fmt: skip


def _ranked_inputs(ops: list[Any]) -> dict[str, list[str]]:
    """For each ranked op, the nearest ranked ops upstream of its inputs (through any other ops)."""
    ranked = {op.get_friendly_name() for op in ops}
    # Keyed by the unique internal name: each get_node() call returns a new Python wrapper.
    memo: dict[str, set[str]] = {}

    def above(node: Any) -> set[str]:
        # Iterative, deepest first: real graphs are deeper than Python's recursion limit allows.
        stack = [node]
        while stack:
            current = stack[-1]
            if current.get_name() in memo:
                stack.pop()
                continue
            parents = [v.get_node() for v in current.input_values()]
            pending = [p for p in parents if p.get_name() not in memo and p.get_friendly_name() not in ranked]
            if pending:
                stack.extend(pending)
                continue
            found: set[str] = set()
            for parent in parents:
                is_ranked = parent.get_friendly_name() in ranked
                found |= {parent.get_friendly_name()} if is_ranked else memo[parent.get_name()]
            memo[current.get_name()] = found
            stack.pop()
        return memo[node.get_name()]

    out = {}
    for op in ops:
        found: set[str] = set()
        for value in op.input_values():
            parent = value.get_node()
            found |= {parent.get_friendly_name()} if parent.get_friendly_name() in ranked else above(parent)
        out[op.get_friendly_name()] = sorted(found)
    return out
