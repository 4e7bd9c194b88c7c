"""``fold-constants``: ``Constant`` nodes become initializers, then constant subgraphs are computed.

Some exporters (Paddle, older TensorFlow paths) keep weights in ``Constant`` nodes, and
the quantizers only quantize initializers: ``quantize_dynamic`` then does nothing or
fails until the constants are folded (FIELD_NOTES). Step one moves every ``Constant`` of
the main graph into ``graph.initializer`` (``value``, ``value_float(s)``, ``value_int(s)``,
``value_string(s)``, ``sparse_value``). Step two finds the nodes whose inputs are all
constant (initializers that are not also graph inputs, or outputs of such nodes) and
computes the values the rest of the graph reads with ONNX Runtime, once, optimizations
off; those values become initializers and the nodes that only served them go away.

Left alone: ``If``/``Loop``/``Scan`` and everything inside their subgraphs (their
``Constant`` nodes stay), random ops, ops of domains ONNX Runtime does not implement,
values that are graph outputs, non-tensor values (sequences), and folded values that
would make the file much bigger than the constants they come from (``size_limit_mb``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from gpuxc.errors import first_line
from gpuxc.passes import Pass, PassConfig, PassContext, PassResult
from gpuxc.project.model import save_model
from gpuxc_passes._common import is_large, subgraphs

# Ops whose output is not a function of their inputs.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli", "Dropout"}  # fmt: skip
# Domains whose ops ONNX Runtime's CPU provider implements.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
MIB = 1 << 20


class FoldConstantsConfig(PassConfig):
    fold: bool = True
    """Also compute constant subgraphs (false: only turn Constant nodes into initializers)."""
    size_limit_mb: float = 64.0
    """A folded value over this size (MiB) is kept only if it is no larger than the constants it is computed from."""


class FoldConstants(Pass[FoldConstantsConfig]):
    name = "fold-constants"
    description = "Constant nodes to initializers, constant subgraphs computed once (ONNX Runtime)"
    Config = FoldConstantsConfig

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        out = ModelProto()
        out.CopyFrom(model)
        graph = out.graph
        stats: dict[str, Any] = {"constants_converted": _constants_to_initializers(out)}
        if self.config.fold:
            stats.update(_fold(out, ctx, self.config.size_limit_mb * MIB))
        modified = stats["constants_converted"] > 0 or stats.get("nodes_folded", 0) > 0
        if not modified:
            return PassResult(model=model, modified=False, stats=stats)
        # value_info of values that no longer exist would mislead shape inference downstream.
        alive = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
        alive |= {s.values.name for s in graph.sparse_initializer} | {v.name for v in graph.input}
        stale = [v for v in graph.value_info if v.name not in alive]
        for value in stale:
            graph.value_info.remove(value)
        if not is_large(out):
            _check(out, model)
        return PassResult(model=out, modified=True, stats=stats)


def _check(result: ModelProto, source: ModelProto) -> None:
    """The ONNX checker on the result; its complaint counts only if the input model passes it."""
    try:
        onnx.checker.check_model(result)
    except onnx.checker.ValidationError:
        try:
            onnx.checker.check_model(source)
        except onnx.checker.ValidationError:
            return  # invalid before this pass (e.g. no shape on a graph input): not ours to judge
        raise


# -- Constant nodes -----------------------------------------------------------------------------


def _constants_to_initializers(model: ModelProto) -> int:
    graph = model.graph
    outputs = {v.name for v in graph.output}
    keep: list[NodeProto] = []
    converted = 0
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is None or node.output[0] in outputs:
            keep.append(node)
            continue
        if isinstance(value, onnx.SparseTensorProto):
            graph.sparse_initializer.append(value)
        else:
            graph.initializer.append(value)
        converted += 1
    if converted:
        del graph.node[:]
        graph.node.extend(keep)
        # IR < 4 requires every initializer to be a graph input too, which would make these
        # overridable (not constant); IR 4 lifted that rule and changes nothing else.
        model.ir_version = max(model.ir_version, 4)
    return converted


def _constant_value(node: NodeProto) -> TensorProto | onnx.SparseTensorProto | None:
    if len(node.attribute) != 1 or node.attribute[0].ref_attr_name:
        return None
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        tensor = TensorProto()
        tensor.CopyFrom(attr.t)
        tensor.name = name
        return tensor
    if attr.name == "sparse_value":
        sparse = onnx.SparseTensorProto()
        sparse.CopyFrom(attr.sparse_tensor)
        sparse.values.name = name
        return sparse
    if attr.name == "value_float":
        return numpy_helper.from_array(np.array(attr.f, np.float32), name)
    if attr.name == "value_floats":
        return numpy_helper.from_array(np.array(list(attr.floats), np.float32), name)
    if attr.name == "value_int":
        return numpy_helper.from_array(np.array(attr.i, np.int64), name)
    if attr.name == "value_ints":
        return numpy_helper.from_array(np.array(list(attr.ints), np.int64), name)
    if attr.name == "value_string":
        return helper.make_tensor(name, TensorProto.STRING, [], [attr.s])
    if attr.name == "value_strings":
        return helper.make_tensor(name, TensorProto.STRING, [len(attr.strings)], list(attr.strings))
    return None


# -- constant subgraphs ---------------------------------------------------------------------------


def _foldable(node: NodeProto) -> bool:
    return (
        node.domain in KNOWN_DOMAINS
        and node.op_type not in NONDETERMINISTIC
        and node.op_type != "Constant"
        and any(node.input)
        and not any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)
    )


def _fold(model: ModelProto, ctx: PassContext, limit: float) -> dict[str, Any]:
    graph = model.graph
    inputs = {v.name for v in graph.input}
    weights = {t.name: t for t in graph.initializer if t.name not in inputs}
    sparse = {s.values.name: s for s in graph.sparse_initializer if s.values.name not in inputs}
    const: set[str] = set(weights) | set(sparse)
    folded_nodes: list[NodeProto] = []
    for node in graph.node:
        if _foldable(node) and all(not i or i in const for i in node.input):
            folded_nodes.append(node)
            const.update(o for o in node.output if o)
    if not folded_nodes:
        return {"nodes_folded": 0}

    folded_ids = {id(n) for n in folded_nodes}
    outputs = {v.name for v in graph.output}
    readers: set[str] = _subgraph_reads(graph)  # outer-scope values read inside If/Loop bodies
    for node in graph.node:
        if id(node) not in folded_ids:
            readers.update(node.input)
    produced = [o for n in folded_nodes for o in n.output if o]
    frontier = [o for o in produced if o in readers and o not in outputs]
    if not frontier:
        return {"nodes_folded": 0}

    try:
        values = _evaluate(model, folded_nodes, weights, sparse, frontier, ctx)
    except Exception as exc:  # an op ONNX Runtime cannot run here: keep the graph as it is
        return {"nodes_folded": 0, "fold_error": f"{type(exc).__name__}: {first_line(exc)}"}

    cone = _cone_bytes(folded_nodes, weights, sparse)
    accepted: dict[str, np.ndarray] = {}
    left: list[str] = []
    for name, value in values.items():
        if not isinstance(value, np.ndarray):
            left.append(name)
        elif value.dtype != object and value.nbytes > limit and value.nbytes > cone.get(name, 0):
            left.append(name)
        else:
            accepted[name] = value

    # Keep the folded nodes something still reads (a value left unfolded, or a graph output).
    needed = (readers | outputs) - set(accepted)
    kept: list[NodeProto] = []
    for node in reversed(folded_nodes):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(node.input)
    kept_ids = {id(n) for n in kept}
    removed = [n for n in folded_nodes if id(n) not in kept_ids]
    nodes = [n for n in graph.node if id(n) not in folded_ids or id(n) in kept_ids]
    del graph.node[:]
    graph.node.extend(nodes)
    for name, value in accepted.items():
        graph.initializer.append(numpy_helper.from_array(value, name))

    # Initializers only the removed nodes read are dead now.
    alive = needed | {i for n in graph.node for i in n.input} | inputs
    dead = {i for n in removed for i in n.input} - alive
    if dead:
        keep_inits = [t for t in graph.initializer if t.name not in dead]
        del graph.initializer[:]
        graph.initializer.extend(keep_inits)
        keep_sparse = [s for s in graph.sparse_initializer if s.values.name not in dead]
        del graph.sparse_initializer[:]
        graph.sparse_initializer.extend(keep_sparse)
    stats: dict[str, Any] = {"nodes_folded": len(removed), "values_folded": len(accepted)}
    if left:
        stats["values_left"] = sorted(left)[:20]
    return stats


def _subgraph_reads(graph: GraphProto) -> set[str]:
    reads: set[str] = set()

    def walk(g: GraphProto) -> None:
        for node in g.node:
            reads.update(node.input)
            for sub in subgraphs(node):
                walk(sub)
        # graph outputs of a body may name an outer value directly
        reads.update(v.name for v in g.output)

    for node in graph.node:
        for sub in subgraphs(node):
            walk(sub)
    return reads


def _evaluate(
    model: ModelProto,
    nodes: list[NodeProto],
    weights: dict[str, TensorProto],
    sparse: dict[str, onnx.SparseTensorProto],
    names: list[str],
    ctx: PassContext,
) -> dict[str, Any]:
    from gpuxc.ort_session import open_session

    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes,
        "fold",
        [],
        [onnx.ValueInfoProto(name=n) for n in names],
        initializer=[weights[i] for i in sorted(used & set(weights))],
        sparse_initializer=[sparse[i] for i in sorted(used & set(sparse))],
    )
    probe = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    probe.functions.extend(model.functions)
    if is_large(probe):
        path = ctx.workdir / "fold-constants-probe.onnx"
        save_model(probe, path)
        session = open_session(path, level="none")
    else:
        session = open_session(probe.SerializeToString(), level="none")
    return dict(zip(names, session.run(names, {}), strict=True))


def _cone_bytes(nodes: list[NodeProto], weights: dict[str, TensorProto],
                sparse: dict[str, onnx.SparseTensorProto]) -> dict[str, int]:  # fmt: skip
    """For each folded value, the bytes of the stored constants it is computed from."""
    sizes = {name: _tensor_bytes(t) for name, t in weights.items()}
    sizes.update({name: _tensor_bytes(s.values) for name, s in sparse.items()})
    cones: dict[str, frozenset[str]] = {name: frozenset([name]) for name in sizes}
    out: dict[str, int] = {}
    for node in nodes:
        cone = frozenset().union(*(cones.get(i, frozenset()) for i in node.input if i))
        for o in node.output:
            if o:
                cones[o] = cone
                out[o] = sum(sizes[c] for c in cone)
    return out


def _tensor_bytes(tensor: TensorProto) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    return tensor.ByteSize()
