"""DirectML and CUDA bundles: ONNX at BASIC optimization for ONNX Runtime's GPU execution providers.

Neither provider runs on a Linux host without a GPU, so both verify the bundle's own
model file on ONNX Runtime CPU (graph numerics) and record the bundle as unverified on
its real runtime; ``python <bundle> verify`` on the device completes the check. BASIC
is the only level saved: EXTENDED/ALL write CPU-only fused and NCHWc ops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from gpuxc.bundle.requirements import pinned, version_of
from gpuxc.errors import CompileError, ConfigError
from gpuxc.passes import PassSpec
from gpuxc.passes.plans import onnx_plan
from gpuxc.project.graph import iter_nodes, opset_map
from gpuxc.targets import Artifact, CompileContext, RuntimeSpec, TargetOptions, Variant
from gpuxc.targets.api import OptionsT
from gpuxc.targets.onnx_file import OnnxFileTarget

if TYPE_CHECKING:
    from onnx import ModelProto

    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature

# ONNX Runtime's DirectML execution provider implements opsets 7 to 20 (ONNX Runtime 1.18+).
DML_OPSETS = (7, 20)
# Ops ONNX Runtime writes at EXTENDED/ALL that only its CPU (and CUDA) kernels implement.
CPU_ONLY_CONTRIB = {"FusedConv", "NchwcConv", "ReorderInput", "ReorderOutput", "NhwcMaxPool", "QLinearConv"}


class _OrtGpuTarget(OnnxFileTarget[OptionsT]):
    """What DirectML and CUDA share: BASIC plans, the ONNX Runtime adapter, CPU-numerics stand-in."""

    providers: list[str]
    gpu_name: str

    def variants(self, config: GpuxConfig, options: OptionsT, auto: bool) -> list[Variant]:
        precision = config.build.precision
        if precision in ("int8-dynamic", "int8-static"):
            raise ConfigError(
                f"{config.where('build', 'precision')}: {precision} is not offered for {self.name}: its "
                "execution provider runs integer kernels poorly or not at all; use fp32 or fp16"
            )
        if auto or precision == "auto":
            # No timing here (no GPU), so auto ships fp32; fp16 is recorded as a verified candidate.
            return [Variant("fp32", "fp32"), Variant("fp16", "fp16")]
        return [Variant(precision, precision)]

    def plan(
        self, config: GpuxConfig, signature: ModelSignature, options: OptionsT, variant: Variant
    ) -> list[PassSpec]:
        level = config.build.optimization_level or "basic"
        if level not in ("none", "basic"):
            raise ConfigError(
                f"{config.where('build', 'optimization_level')}: {self.name} bundles are saved at 'basic' at most; "
                f"'{level}' writes ONNX Runtime CPU-only fused ops the {self.gpu_name} provider cannot run"
            )
        return onnx_plan(config, variant, level, ["CPUExecutionProvider"], signature=signature)

    def compile(self, model: ModelProto, ctx: CompileContext[OptionsT]) -> Artifact:
        self.check_graph(model)
        files = self.save_onnx(model, ctx)
        return Artifact(entry=files[0], format="onnx", files=files, settings=self.session_settings(ctx.options))

    def check_graph(self, model: ModelProto) -> None:
        bad = set()
        for node in iter_nodes(model.graph):
            if node.domain == "com.microsoft.nchwc" or (
                node.domain.startswith("com.microsoft") and node.op_type in CPU_ONLY_CONTRIB
            ):
                bad.add(f"{node.domain}:{node.op_type}")
        if bad:
            raise CompileError(
                f"{self.name}: the model holds ONNX Runtime CPU-only ops its provider cannot run: "
                f"{', '.join(sorted(bad))}"
            )

    def session_settings(self, options: OptionsT) -> dict[str, Any]:
        """The provider's session settings, recorded in the artifact for the runner."""
        raise NotImplementedError

    def why_stand_in(self) -> str | None:
        return f"the {self.gpu_name} execution provider cannot run on this host"

    def verification_runtime(self) -> str:
        return f"{super().verification_runtime()} (stand-in for {self.providers[0]})"


class DirectMLOptions(TargetOptions):
    """``build.options.directml`` in gpux.yml."""

    device_id: Annotated[int, Field(ge=0)] = 0
    """DirectX adapter index the runner uses."""


class DirectMLTarget(_OrtGpuTarget[DirectMLOptions]):
    name = "directml"
    description = "ONNX Runtime DirectML (Windows GPUs); ONNX at BASIC level, DML session settings"
    Options = DirectMLOptions
    install_hint = "pip install onnxruntime-directml (Windows)"
    providers = ["DmlExecutionProvider", "CPUExecutionProvider"]
    gpu_name = "DirectML"

    def check_graph(self, model: ModelProto) -> None:
        super().check_graph(model)
        opset = opset_map(model).get("", 0)
        low, high = DML_OPSETS
        if not low <= opset <= high:
            raise CompileError(
                f"directml: opset {opset} is outside the {low}-{high} the DirectML execution provider supports",
                hint="convert with onnx.version_converter and recompile",
            )

    def session_settings(self, options: DirectMLOptions) -> dict[str, Any]:
        # DirectML requires both: it cannot run with memory patterns or parallel execution.
        return {"device_id": options.device_id, "disable_memory_pattern": True, "execution_mode": "sequential"}

    def runtime(self, options: DirectMLOptions, artifact: Artifact) -> RuntimeSpec:
        version = version_of("onnxruntime")
        return RuntimeSpec(
            adapter="onnxruntime/runtime.py",
            requirements=[
                f"onnxruntime-directml=={version}; sys_platform == 'win32'",
                f"onnxruntime=={version}; sys_platform != 'win32'",
                *pinned(["numpy"]),
            ],
            providers=self.providers,
        )


class CudaOptions(TargetOptions):
    """``build.options.cuda`` in gpux.yml."""

    device_id: Annotated[int, Field(ge=0)] = 0
    """CUDA device the runner uses."""
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    """cuDNN convolution algorithm search (EXHAUSTIVE: slow first run, fastest after)."""
    cuda_graphs: bool = False
    """Capture CUDA graphs (needs static input shapes: set build.shapes)."""


class CudaTarget(_OrtGpuTarget[CudaOptions]):
    name = "cuda"
    description = "ONNX Runtime CUDA (NVIDIA GPUs); ONNX at BASIC level, CUDA provider options"
    Options = CudaOptions
    install_hint = "pip install onnxruntime-gpu"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    gpu_name = "CUDA"

    def why_stand_in(self) -> str | None:
        try:
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers():
                return None
        except ImportError:
            pass
        return super().why_stand_in()

    def execute_providers(self) -> list[str]:
        return super().execute_providers() if self.why_stand_in() else self.providers

    def plan(
        self, config: GpuxConfig, signature: ModelSignature, options: CudaOptions, variant: Variant
    ) -> list[PassSpec]:
        if options.cuda_graphs and not config.build.shapes:
            raise ConfigError(f"{config.where('build', 'options', 'cuda', 'cuda_graphs')}: CUDA graphs need static "
                              "input shapes: set build.shapes")  # fmt: skip
        return super().plan(config, signature, options, variant)

    def session_settings(self, options: CudaOptions) -> dict[str, Any]:
        return {"device_id": options.device_id, "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
                "enable_cuda_graph": options.cuda_graphs}  # fmt: skip

    def runtime(self, options: CudaOptions, artifact: Artifact) -> RuntimeSpec:
        return RuntimeSpec(
            adapter="onnxruntime/runtime.py",
            requirements=[f"onnxruntime-gpu=={version_of('onnxruntime')}", *pinned(["numpy"])],
            providers=self.providers,
        )
