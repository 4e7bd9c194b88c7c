"""ONNX Runtime CPU target.

Offline optimization is saved at EXTENDED at most so the bundle stays portable
across x86-64 and ARM hosts; ORT still applies its host-specific layout
optimizations when the runner opens the model on the deployment machine. ALL
(NCHWc, this host's CPU) is allowed only with ``host_specific: true``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from gpuxc.bundle import layout
from gpuxc.bundle.requirements import pinned
from gpuxc.errors import CompileError, ConfigError
from gpuxc.passes import PassSpec
from gpuxc.passes.plans import has_calibration, onnx_plan
from gpuxc.targets import Artifact, CompileContext, RuntimeSpec, TargetOptions, Variant
from gpuxc.targets.onnx_file import OnnxFileTarget
from gpuxc.targets.timing import RUNTIME_SETTINGS

if TYPE_CHECKING:
    import numpy as np
    from onnx import ModelProto

    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature

PROVIDERS = ["CPUExecutionProvider"]
ADAPTER = "onnxruntime/runtime.py"


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
    simplify: Literal["off", "onnxsim", "onnxslim"] = "off"
    """Run the simplify pass first (optional: skipped with the reason recorded when it fails)."""
    ort_format: bool = False
    """Ship model.ort plus its required-operators config, for ONNX Runtime minimal builds on edge devices."""
    transformer_fusion: bool = False
    """fp32: run ONNX Runtime's transformer optimizer (Attention, SkipLayerNorm) on models with attention."""


class CpuTarget(OnnxFileTarget[CpuOptions]):
    name = "cpu"
    description = "ONNX Runtime, CPU execution provider (portable ONNX, optimized offline)"
    Options = CpuOptions
    install_hint = "pip install onnxruntime"

    def variants(self, config: GpuxConfig, options: CpuOptions, auto: bool) -> list[Variant]:
        if not (auto or config.build.precision == "auto"):
            return [Variant(config.build.precision, config.build.precision)]
        # fp16 is no candidate here: ONNX Runtime's CPU kernels are fp32 and would add casts.
        found = [Variant("fp32", "fp32"), Variant("int8-dynamic", "int8-dynamic")]
        if has_calibration(config):
            found.append(Variant("int8-static", "int8-static"))
        if "int4-weights" in config.build.optimize_include:
            found.append(Variant("int4-weights", "int4-weights"))
        return found

    def plan(
        self, config: GpuxConfig, signature: ModelSignature, options: CpuOptions, variant: Variant
    ) -> list[PassSpec]:
        level = config.build.optimization_level or "extended"
        if level == "all" and not options.host_specific:
            raise ConfigError(
                f"{config.where('build', 'optimization_level')}: optimization level 'all' makes the cpu bundle "
                "specific to this host's CPU; set build.options.cpu.host_specific: true to ask for that"
            )
        specs = onnx_plan(config, variant, level, PROVIDERS, options.simplify, signature=signature,
                          contrib_ops=True, fusion=options.transformer_fusion)  # fmt: skip
        if options.ort_format:
            specs.append(PassSpec("ort-format", {}))
        return specs

    def compile(self, model: ModelProto, ctx: CompileContext[CpuOptions]) -> Artifact:
        options = ctx.options
        model_dir = ctx.bundle_dir / layout.MODEL_DIR
        if options.ort_format:
            # A minimal ONNX Runtime build reads only .ort; the full build reads it too.
            ort_file = ctx.extra_files.get("model.ort")
            if ort_file is None:
                raise CompileError("cpu: ort_format is set but the ort-format pass produced no model.ort")
            model_dir.mkdir(parents=True, exist_ok=True)
            files = []
            for name, path in sorted(ctx.extra_files.items()):
                shutil.copyfile(path, model_dir / name)
                files.append(f"model/{name}")
            entry, fmt = "model/model.ort", "ort"
        else:
            files = self.save_onnx(model, ctx)
            entry, fmt = files[0], "onnx"
        return Artifact(
            entry=entry,
            format=fmt,
            files=files,
            settings={
                "intra_op_threads": options.intra_op_threads,
                "inter_op_threads": options.inter_op_threads,
                "execution_mode": options.execution_mode,
                "host_specific": options.host_specific,
                # Runtime settings --optimize auto chose (or a policy replays): the runner applies them.
                **ctx.variant.settings.get(RUNTIME_SETTINGS, {}),
            },
        )

    def runtime(self, options: CpuOptions, artifact: Artifact) -> RuntimeSpec:
        return RuntimeSpec(
            adapter=ADAPTER,
            requirements=pinned(["onnxruntime", "numpy"]),
            providers=PROVIDERS,
        )

    def tuning_candidates(self, artifact: Artifact) -> list[dict[str, Any]]:
        from gpuxc.host import physical_cores

        settings = artifact.settings
        found: list[dict[str, Any]] = []
        if not settings.get("intra_op_threads"):  # 0 is ONNX Runtime's choice; a count the user set is kept
            if physical_cores() > 1:
                found.append({"intra_op_threads": 1})  # a small model: no thread pool to wake per run
            found.append({"allow_spinning": False})  # idle pool threads stop competing with the caller
        if settings.get("execution_mode", "sequential") == "sequential":
            found.append({"execution_mode": "parallel"})  # independent branches run side by side
        return found

    def timer(self, bundle_dir: Path, artifact: Artifact) -> Callable[[dict[str, np.ndarray]], Any]:
        from gpuxc.targets.timing import adapter_timer

        # The runner's own adapter and run path, with the artifact's settings: what the bundle delivers.
        return adapter_timer(ADAPTER, bundle_dir / artifact.entry, artifact.settings, "cpu")
