"""TensorRT engine builder: the one implementation gpuxc (ahead of time) and bundles (on the device) use.

Imports only the standard library and, inside the functions, ``tensorrt``: the bundle writer
copies this file verbatim into every tensorrt bundle as ``runner/trt_builder.py``.

Written against the TensorRT 10/11 Python API: a strongly typed network (precision comes
from the graph: fp16 casts or Q/DQ nodes, as TensorRT 11 requires; no builder precision
flags), one optimization profile with min/opt/max per dynamic input, a workspace limit, an
optional hardware-compatibility level, and a timing cache reused across builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EngineBuildError(RuntimeError):
    """The ONNX parser or the builder refused the model."""


def engine_key(model_sha256: str, gpu_name: str, compute_capability: str, trt_version: str) -> str:
    """Cache key of an engine: the model, the GPU and the TensorRT version it was built for."""
    gpu = "".join(ch if ch.isalnum() else "-" for ch in gpu_name).strip("-").lower() or "gpu"
    return f"{model_sha256[:16]}-{gpu}-sm{compute_capability.replace('.', '')}-trt{trt_version}"


def build_engine(onnx_path: Path, settings: dict[str, Any], timing_cache: Path | None = None) -> bytes:
    """Serialized engine for ``onnx_path`` under ``settings`` (profiles, workspace_bytes, ...)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser refused the model: {errors or 'no detail'}")
    config = builder.create_builder_config()
    workspace = settings.get("workspace_bytes")
    if workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if settings.get("hardware_compatibility") == "ampere_plus":
        # One engine for every Ampere-or-newer GPU, at some speed cost.
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profiles = settings.get("profiles") or {}
    if profiles:
        profile = builder.create_optimization_profile()
        for name, shapes in profiles.items():
            profile.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
        config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT could not build an engine for this model and profile")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)
