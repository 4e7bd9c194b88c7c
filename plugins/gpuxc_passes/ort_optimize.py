"""``ort-optimize``: ONNX Runtime's offline graph optimization, saved as a portable ONNX file.

The level is chosen by the target, not by this host: BASIC keeps only standard
ONNX ops (constant folding, redundant node elimination) and is safe for any
execution provider; EXTENDED adds ``com.microsoft`` fused ops that only the CPU
(and CUDA) execution providers run; ALL adds NCHWc layout ops specific to this
host's CPU, so it is allowed only for an explicitly host-specific bundle.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import onnx
from onnx import ModelProto

from gpuxc.passes import Pass, PassConfig, PassContext, PassResult
from gpuxc.project.graph import iter_nodes
from gpuxc.project.model import save_model

LEVELS = ("basic", "extended", "all")


class OrtOptimizeConfig(PassConfig):
    level: Literal["basic", "extended", "all"] = "basic"
    """ONNX Runtime graph optimization level to save the model at."""
    providers: list[str] = ["CPUExecutionProvider"]
    """Execution providers the session is created with while optimizing (fusions depend on them)."""


class OrtOptimize(Pass):
    name = "ort-optimize"
    description = "ONNX Runtime offline graph optimization (basic | extended | all)"
    Config = OrtOptimizeConfig

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        import onnxruntime as ort

        config: OrtOptimizeConfig = self.config  # type: ignore[assignment]
        src = ctx.workdir / "ort-optimize-in.onnx"
        dst = ctx.workdir / "ort-optimize-out.onnx"
        save_model(model, src)
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[config.level]
        options.optimized_model_filepath = str(dst)
        options.log_severity_level = 3  # the ALL-level "hardware specific" warning is expected and recorded
        if model.ByteSize() > 1_800_000_000:
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", "ort-optimize-out.data"
            )
        ort.InferenceSession(str(src), options, providers=config.providers)
        optimized = onnx.load(str(dst))
        before = _ops(model)
        after = _ops(optimized)
        stats = {
            "level": config.level,
            "ops_removed": {k: v for k, v in (before - after).items()},
            "ops_added": {k: v for k, v in (after - before).items()},
            "contrib_ops": sum(v for k, v in after.items() if k.startswith("com.microsoft")),
        }
        modified = before != after or len(optimized.graph.initializer) != len(model.graph.initializer)
        return PassResult(model=optimized, modified=modified, stats=stats)


def _ops(model: ModelProto) -> Counter[str]:
    return Counter(
        f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in iter_nodes(model.graph)
    )
