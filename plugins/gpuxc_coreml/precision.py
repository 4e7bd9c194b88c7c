"""fp16 compute with chosen ops kept in fp32: which ONNX nodes, and which MIL ops they became.

Core ML runs only on macOS, so the ranking cannot run on Core ML here. It runs on a proxy instead:
the fp16 converter's model of the same graph on ONNX Runtime CPU, ranked against the fp32 graph
by gpuxc's layer sensitivity (each node's own error contribution). Nodes whose contribution is
large are kept in fp32, or exactly the nodes the user lists (``keep_float``). The proxy is not
Core ML's fp16 (other kernels, other accumulation): the choice is recorded as the proxy's, and
the package stays unverified until it runs on a Mac.

The keeping is ``ct.transform.FP16ComputePrecision(op_selector=...)``: the selector declines the
MIL ops a kept node was translated to. The translators name a node's last MIL op after its first
output tensor and build its ops in node order, so a node's ops are those created after the
previous node's last op, up to its own (constants included, which the selector never sees).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpuxc.errors import ConfigError

if TYPE_CHECKING:
    from onnx import ModelProto

    from gpuxc.project.config import GpuxConfig
    from gpuxc.targets import CompileContext

# A node kept by the proxy ranking adds at least this relative error by itself in fp16 (plain fp16
# rounding is ~1e-3; a node at 1e-2 or more is where the precision goes), at most PROXY_MAX_KEPT.
PROXY_MIN_CONTRIBUTION = 1e-2
PROXY_MAX_KEPT = 8
RANKED_ON = "the fp16 converter's model of the graph on ONNX Runtime CPU (a proxy: Core ML needs macOS)"


def check_listed(model: ModelProto, names: list[str], config: GpuxConfig) -> None:
    """Every node ``build.options.coreml.keep_float`` names is a node of the graph being translated."""
    known = {n.name for n in model.graph.node if n.name}
    for index, name in enumerate(names):
        if name not in known:
            where = config.where("build", "options", "coreml", "keep_float", index)
            raise ConfigError(f"{where}: keep_float names '{name}', which is not a node of the model "
                              "(after constant folding and BASIC optimization)")  # fmt: skip


def choose_kept(model: ModelProto, ctx: CompileContext[Any], listed: list[str] | None) -> list[dict[str, Any]]:
    """The nodes to keep in fp32, each with why: listed by the user, or ranked by the fp16 proxy."""
    if listed is not None:
        check_listed(model, listed, ctx.config)
        return [{"node": name, "why": "listed in build.options.coreml.keep_float"} for name in listed]
    kept = []
    for s in proxy_ranking(model, ctx)[:PROXY_MAX_KEPT]:
        if s.contribution >= PROXY_MIN_CONTRIBUTION:
            kept.append({"node": s.node, "op_type": s.op_type, "why": "fp16 proxy ranking",
                         "contribution": float(f"{s.contribution:.4g}")})  # fmt: skip
    return kept


def proxy_ranking(model: ModelProto, ctx: CompileContext[Any]) -> list[Any]:
    """The graph's compute nodes ranked by their own error in the fp16 converter's model (ONNX
    Runtime CPU), on two generated inputs at the translation's shapes."""
    from gpuxc.build.sensitivity import rank_nodes
    from gpuxc.passes import PassContext, PassManager, PassSpec
    from gpuxc.plugin import get_registry
    from gpuxc.project.reference import generate, index_bounds, resolve_shapes

    shapes = resolve_shapes(ctx.signature, ctx.config)
    scratch = ctx.workdir / "coreml-fp16-proxy"
    scratch.mkdir(parents=True, exist_ok=True)
    pctx = PassContext(workdir=scratch, target="coreml", model_dir=ctx.config.project_dir,
                       project_dir=ctx.config.project_dir, reference_shapes=shapes)  # fmt: skip
    spec = PassSpec("fp16", {"keep_io_types": True, "check": False})
    proxy, records = PassManager(get_registry()).run(model, [spec], pctx)
    if not records or records[0].status != "applied":
        return []
    bounds = index_bounds(model)
    seed = ctx.config.build.seed
    feeds = [generate(ctx.signature, shapes, seed + k, bounds) for k in range(2)]
    return list(rank_nodes(model, proxy, feeds))


def kept_mil_vars(program: Any, model: ModelProto, nodes: list[str]) -> set[str]:
    """Names of the MIL variables produced by the (non-const) ops the ``nodes`` were translated to."""
    wanted = set(nodes)
    anchors = {n.output[0]: n.name for n in model.graph.node if n.output and n.output[0]}
    kept: set[str] = set()
    pending: list[str] = []
    for op in program.functions["main"].operations:
        names = [v.name for v in op.outputs]
        if op.op_type != "const":  # weights follow the op reading them (fp16 only if it computes in fp16)
            pending += names
        node = next((anchors[n] for n in names if n in anchors), None)
        if node is not None:
            if node in wanted:
                kept.update(pending)
            pending = []
    return kept


def op_selector(kept: set[str]) -> Callable[[Any], bool]:
    """For FP16ComputePrecision: True (compute in fp16) unless the op produces a kept variable."""
    return lambda op: not any(v.name in kept for v in op.outputs)
