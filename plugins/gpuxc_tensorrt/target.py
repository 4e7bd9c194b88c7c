"""TensorRT target. Engines are tied to the GPU and TensorRT version that build them, so:

- always: the ONNX is prepared for TensorRT (BASIC optimization with constant folding, fixed
  shapes where given, precision in the graph: fp16 casts or Q/DQ INT8) and verified
  numerically on ONNX Runtime CPU; optimization profiles (min/opt/max per dynamic input) and
  the workspace limit (``runtime.gpu.memory``) go into the manifest;
- with ``tensorrt`` importable and a GPU at compile time: the engine is built ahead of time;
- otherwise (``engine: deferred``): the bundle's runner builds it on first start on the device
  with the same builder code (``runner/trt_builder.py``, a verbatim copy of builder.py) and
  caches it keyed by model, GPU and TensorRT version.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gpuxc.build.layer_precision import node_precisions, precision_counts
from gpuxc.bundle import layout
from gpuxc.bundle.requirements import pinned, version_of
from gpuxc.digests import sha256_file
from gpuxc.errors import CompileError, ConfigError
from gpuxc.passes import PassSpec
from gpuxc.passes.plans import onnx_plan
from gpuxc.targets import Artifact, CompileContext, RuntimeSpec, TargetOptions, Variant
from gpuxc.targets.onnx_file import OnnxFileTarget
from gpuxc_tensorrt.builder import network_flags

if TYPE_CHECKING:
    from onnx import ModelProto

    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature

BUILDER = Path(__file__).with_name("builder.py")
# TensorRT's explicit quantization is symmetric int8 only (zero points must be 0; its parser
# refuses others): ONNX Runtime's CPU default, uint8 activations with a zero point, would not parse.
TENSORRT_QDQ = {"activation_type": "qint8", "weight_type": "qint8",
                "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True}}  # fmt: skip
# What the precision in the manifest was checked on: the graph, never an engine.
PRECISION_CHECKED_ON = "the prepared ONNX graph on ONNX Runtime CPU (stand-in), not a TensorRT engine"
# The oldest TensorRT a bundle installs (its requirements): strongly typed networks from here on.
MIN_TENSORRT = "10"
# When a dynamic batch dim has no larger value configured, profiles allow up to this.
DEFAULT_MAX_BATCH = 8
# Image preprocessing's pixel input: its profile allows heights and widths from 1/PIXEL_RANGE to
# PIXEL_RANGE times the reference (the size the graph resizes to). 2: the engine's own bilinear
# resize stays within a 2x downscale (no antialias needed) and a 1024x1024 detector's max batch of
# float pixels stays ~400 MB; larger pictures are scaled into the band by the adapter.
PIXEL_RANGE = 2


class TensorRTOptions(TargetOptions):
    """``build.options.tensorrt`` in gpux.yml."""

    profiles: dict[str, dict[str, list[int]]] = {}
    """Input name -> {min, opt, max} full shapes; inputs not given get min 1 / opt reference / max batch 8."""
    hardware_compatibility: Literal["none", "ampere_plus"] = "none"
    """Build one engine for every Ampere-or-newer GPU (slower) instead of the one it is built on."""
    adapter: Literal["tensorrt", "onnxruntime"] = "tensorrt"
    """Runner: the TensorRT runtime with cuda-python, or onnxruntime-gpu's TensorRT execution provider."""
    engine_cache_dir: str | None = None
    """Where the runner caches built engines (default: ~/.cache/gpuxc/engines)."""


def why_no_tensorrt() -> str | None:
    """Why an engine cannot be built here, or None when TensorRT and a GPU are present."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a missing libnvinfer (OSError)
        return f"TensorRT is not importable here ({type(exc).__name__})"
    try:
        from cuda.bindings import runtime as cudart

        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            return "no CUDA GPU is visible"
    except Exception as exc:
        return f"cuda-python cannot query the GPU ({type(exc).__name__})"
    return None


class TensorRTTarget(OnnxFileTarget[TensorRTOptions]):
    name = "tensorrt"
    description = "TensorRT engine for NVIDIA GPUs: built ahead of time, or on the device on first start"
    Options = TensorRTOptions
    install_hint = "compiling needs nothing more; engines build on the device (pip install tensorrt cuda-python)"

    def variants(self, config: GpuxConfig, options: TensorRTOptions, auto: bool) -> list[Variant]:
        precision = config.build.precision
        if precision == "int8-dynamic":
            raise ConfigError(f"{config.where('build', 'precision')}: TensorRT has no dynamic quantization; "
                              "use int8-static (Q/DQ from calibration data) or fp16")  # fmt: skip
        if auto or precision == "auto":
            # No timing without the GPU: auto ships fp32 and records fp16 as a verified candidate.
            return [Variant("fp32", "fp32"), Variant("fp16", "fp16")]
        return [Variant(precision, precision)]

    def plan(
        self, config: GpuxConfig, signature: ModelSignature, options: TensorRTOptions, variant: Variant
    ) -> list[PassSpec]:
        level = config.build.optimization_level or "basic"
        if level not in ("none", "basic"):
            raise ConfigError(
                f"{config.where('build', 'optimization_level')}: TensorRT takes standard ONNX: "
                f"'{level}' writes ONNX Runtime contrib ops its parser cannot read; use basic"
            )
        specs = onnx_plan(config, variant, level, ["CPUExecutionProvider"], signature=signature)
        specs = [replace(s, params={**s.params, **TENSORRT_QDQ}) if s.name == "quantize-static" else s for s in specs]
        if variant.precision == "fp32":
            specs.insert(0, PassSpec("fold-constants", {}, required=False))
        return specs

    def profiles(self, ctx: CompileContext[TensorRTOptions], model: ModelProto) -> dict[str, dict[str, list[int]]]:
        """min/opt/max for every input with a dynamic dim (explicit ones checked against the model)."""
        from gpuxc.project.model import tensor_info
        from gpuxc.project.reference import resolve_shapes

        options = ctx.options
        reference = resolve_shapes(ctx.signature, ctx.config)
        out: dict[str, dict[str, list[int]]] = {}
        initializers = {t.name for t in model.graph.initializer}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            info = tensor_info(value)
            shape = info.shape or []
            given = options.profiles.get(value.name)
            if given is not None:
                for key in ("min", "opt", "max"):
                    dims = given.get(key)
                    if dims is None or len(dims) != len(shape):
                        raise CompileError(
                            f"tensorrt: profile for '{value.name}' needs min/opt/max of rank {len(shape)}"
                        )
                    if any(isinstance(d, int) and d != v for d, v in zip(shape, dims, strict=True)):
                        raise CompileError(f"tensorrt: profile {key} for '{value.name}' changes a fixed dim {shape}")
                out[value.name] = {k: list(given[k]) for k in ("min", "opt", "max")}
                continue
            if all(isinstance(d, int) for d in shape):
                continue
            opt = reference.get(value.name) or [d if isinstance(d, int) else 1 for d in shape]
            low = [d if isinstance(d, int) else 1 for d in shape]
            high = list(opt)
            if shape and not isinstance(shape[0], int):
                high[0] = max(opt[0], ctx.config.serving.batch_limit, DEFAULT_MAX_BATCH)
            if _is_pixel_input(ctx.config, value.name, info.dtype, shape):
                # Image preprocessing's uint8 pixels: any height and width in ONNX, but an engine
                # allocates for the profile's max. A band around the size the graph resizes to;
                # the adapter scales other pictures into it (fit_to_profile).
                for axis in (1, 2):
                    if not isinstance(shape[axis], int):
                        low[axis] = max(1, opt[axis] // PIXEL_RANGE)
                        high[axis] = opt[axis] * PIXEL_RANGE
            out[value.name] = {"min": low, "opt": list(opt), "max": high}
        unknown = set(options.profiles) - {v.name for v in model.graph.input}
        if unknown:
            raise CompileError(f"tensorrt: profiles name '{sorted(unknown)[0]}', which is not a model input")
        return out

    def compile(self, model: ModelProto, ctx: CompileContext[TensorRTOptions]) -> Artifact:
        options = ctx.options
        model_dir = ctx.bundle_dir / layout.MODEL_DIR
        files = self.save_onnx(model, ctx)
        runner_dir = ctx.bundle_dir / layout.RUNNER_DIR
        runner_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BUILDER, runner_dir / "trt_builder.py")  # the same builder, on the device
        profiles = self.profiles(ctx, model)
        settings: dict[str, Any] = {
            "engine": "deferred",
            "profiles": profiles,
            # Pixel inputs the adapter scales into their profile's height/width band (aspect kept).
            "fit_to_profile": sorted(name for name in profiles
                                     if _is_pixel_input(ctx.config, name, "uint8", profiles[name]["opt"])),
            "workspace_bytes": ctx.config.runtime.gpu.memory_bytes,
            "hardware_compatibility": options.hardware_compatibility,
            "precision": ctx.variant.precision,
            "adapter": options.adapter,
            "engine_cache_dir": options.engine_cache_dir,
            "model_sha256": sha256_file(model_dir / "model.onnx"),
            "deterministic": False,  # engines embed timing-based tactic choices
            # The bundle needs TensorRT >= 10, where builder.network_flags makes every network
            # strongly typed: the layer types below are the engine's, not the builder's choice.
            "strongly_typed": "STRONGLY_TYPED" in network_flags(MIN_TENSORRT, ctx.variant.precision)["network"],
            "layer_precision": layer_precision(model, ctx.variant),
        }
        files.append("runner/trt_builder.py")
        why_not = why_no_tensorrt()
        if why_not is None:
            files.append(self._build_ahead(model_dir, settings))
        else:
            settings["deferred_reason"] = why_not
        return Artifact(entry="model/model.onnx", format="onnx-for-tensorrt", files=files, settings=settings)

    def _build_ahead(self, model_dir: Path, settings: dict[str, Any]) -> str:  # pragma: no cover - needs a GPU
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        from gpuxc_tensorrt.builder import build_engine

        err, props = cudart.cudaGetDeviceProperties(0)
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        cache = Path.home() / ".cache" / "gpuxc" / "tensorrt-timing.cache"
        (model_dir / "model.engine").write_bytes(build_engine(model_dir / "model.onnx", settings, cache))
        settings.update(engine="aot", gpu=gpu, compute_capability=f"{props.major}.{props.minor}",
                        tensorrt_version=trt.__version__)  # fmt: skip
        flags = network_flags(trt.__version__, settings["precision"])
        settings["strongly_typed"] = "STRONGLY_TYPED" in flags["network"]
        return "model/model.engine"

    def why_stand_in(self) -> str | None:
        return "the TensorRT engine is built and run on the device (no GPU/TensorRT here)"

    def verification_runtime(self) -> str:
        return f"{super().verification_runtime()} (stand-in: the prepared ONNX)"

    def runtime(self, options: TensorRTOptions, artifact: Artifact) -> RuntimeSpec:
        if options.adapter == "onnxruntime":
            requirements = [f"onnxruntime-gpu=={version_of('onnxruntime')}", *pinned(["numpy"])]
            providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
            return RuntimeSpec(adapter="onnxruntime/runtime.py", requirements=requirements, providers=providers)
        # TensorRT itself is installed per CUDA version from NVIDIA's index on the device.
        requirements = [f"tensorrt>={MIN_TENSORRT},<12", "cuda-python>=12", *pinned(["numpy"])]
        return RuntimeSpec(adapter="tensorrt/runtime.py", requirements=requirements, providers=["tensorrt"])


def _is_pixel_input(config: GpuxConfig, name: str, dtype: str, shape: list[Any]) -> bool:
    """Whether ``name`` is image preprocessing's uint8 [N, H, W, C] input."""
    pre = config.preprocessing
    return (pre.kind == "image" and name == pre.image_input and dtype == "uint8" and len(shape) == 4
            and shape[3] in (1, 3))  # fmt: skip


def layer_precision(model: ModelProto, variant: Variant) -> dict[str, Any]:
    """What the manifest says of the graph's per-layer precision: counts, the compute layers a
    lossy variant keeps in fp32 (the precision repair's, by name), and what checked it."""
    precisions = node_precisions(model)
    kept = list(variant.settings.get("keep_float", []))
    out: dict[str, Any] = {"counts": precision_counts(precisions), "checked_on": PRECISION_CHECKED_ON}
    if variant.precision != "fp32":
        out["kept_fp32"] = {name: precisions.get(name, "absent") for name in kept}
    return out
