"""ONNX Runtime CPU target.

Offline optimization is saved at EXTENDED at most so the bundle stays portable
across x86-64 and ARM hosts; ORT still applies its host-specific layout
optimizations when the runner opens the model on the deployment machine. ALL
(NCHWc, this host's CPU) is allowed only with ``host_specific: true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from gpuxc.errors import CompileError, ConfigError
from gpuxc.model import save_model
from gpuxc.passes import PassSpec
from gpuxc.runtime_versions import pinned
from gpuxc.target import Artifact, CompileContext, RuntimeSpec, Target, TargetOptions

if TYPE_CHECKING:
    import numpy as np
    from onnx import ModelProto

    from gpuxc.config import GpuxConfig
    from gpuxc.model import ModelSignature

PROVIDERS = ["CPUExecutionProvider"]


class CpuOptions(TargetOptions):
    """``build.options.cpu`` in gpux.yml."""

    host_specific: bool = False
    """Allow optimization level 'all' (NCHWc layouts for the build host's CPU); the manifest says so."""
    intra_op_threads: Annotated[int, Field(ge=0)] = 0
    """Threads inside one operator; 0 lets ONNX Runtime choose (one per physical core)."""
    inter_op_threads: Annotated[int, Field(ge=0)] = 0
    """Threads across operators in parallel mode; 0 lets ONNX Runtime choose."""
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    """ONNX Runtime execution mode; parallel only helps graphs with independent branches."""


class CpuTarget(Target):
    name = "cpu"
    description = "ONNX Runtime, CPU execution provider (portable ONNX, optimized offline)"
    Options = CpuOptions
    install_hint = "pip install onnxruntime"

    def plan(self, config: GpuxConfig, signature: ModelSignature, options: CpuOptions) -> list[PassSpec]:  # type: ignore[override]
        specs: list[PassSpec] = []
        if config.build.shapes:
            specs.append(PassSpec("fix-shapes", {"shapes": config.build.shapes}))
        level = config.build.optimization_level or "extended"
        if level == "all" and not options.host_specific:
            raise ConfigError(
                f"{config.where('build', 'optimization_level')}: optimization level 'all' makes the cpu bundle "
                "specific to this host's CPU; set build.options.cpu.host_specific: true to ask for that"
            )
        if level != "none":
            specs.append(PassSpec("ort-optimize", {"level": level, "providers": PROVIDERS}))
        return specs

    def compile(self, model: ModelProto, ctx: CompileContext) -> Artifact:
        target = ctx.bundle_dir / "model" / "model.onnx"
        try:
            extra = save_model(model, target)
        except Exception as exc:
            raise CompileError(f"cpu: cannot write the model: {exc}") from None
        options: CpuOptions = ctx.options  # type: ignore[assignment]
        return Artifact(
            entry="model/model.onnx",
            format="onnx",
            files=["model/model.onnx", *(f"model/{name}" for name in extra)],
            settings={
                "intra_op_threads": options.intra_op_threads,
                "inter_op_threads": options.inter_op_threads,
                "execution_mode": options.execution_mode,
                "host_specific": options.host_specific,
            },
        )

    def runtime(self, options: CpuOptions, artifact: Artifact) -> RuntimeSpec:  # type: ignore[override]
        return RuntimeSpec(
            adapter="onnxruntime/runtime.py.j2",
            requirements=pinned(["onnxruntime", "numpy"]),
            providers=PROVIDERS,
        )

    def verification_runtime(self) -> str:
        from gpuxc.runtime_versions import version_of

        return f"onnxruntime {version_of('onnxruntime')} CPUExecutionProvider"

    def execute(self, bundle_dir: Path, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from gpuxc.reference import run_onnxruntime

        return run_onnxruntime(bundle_dir / artifact.entry, inputs, providers=PROVIDERS)
