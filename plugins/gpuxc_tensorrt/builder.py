"""TensorRT engine builder: the one implementation gpuxc (ahead of time) and bundles (on the device) use.

Imports only the standard library and, inside the functions, ``tensorrt``: the bundle writer
copies this file verbatim into every tensorrt bundle as ``runner/trt_builder.py``.

Written against the TensorRT 10/11 Python API: a strongly typed network (precision comes
from the graph: fp16 casts or Q/DQ nodes, as TensorRT 11 requires; no builder precision
flags; :func:`network_flags` says which flags a TensorRT version gets), one optimization
profile with min/opt/max per dynamic input, a workspace limit, an optional
hardware-compatibility level, and a timing cache reused across builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The first TensorRT release whose NetworkDefinitionCreationFlag has STRONGLY_TYPED (and whose
# ONNX parser is explicit-batch only, EXPLICIT_BATCH deprecated).
STRONGLY_TYPED_SINCE = (10, 0)


class EngineBuildError(RuntimeError):
    """The ONNX parser or the builder refused the model."""


def network_flags(trt_version: str, precision: str) -> dict[str, list[str]]:
    """The ``NetworkDefinitionCreationFlag`` and ``BuilderFlag`` names for a TensorRT version.

    A strongly typed network takes every layer's type from the graph (the fp16 converter's casts,
    the Q/DQ nodes, the nodes a precision repair kept in float), so the builder has no precision
    flags and cannot re-choose a kept layer's type. An older TensorRT only builds weakly typed
    networks: there the precision the graph asks for has to be allowed by builder flags, and the
    builder may still pick fp32 kernels for fp16 layers (its per-layer choices are its own).
    """
    parts = [int(p) if p.isdigit() else 0 for p in trt_version.split(".")[:2]]
    version = (parts + [0, 0])[:2]
    if tuple(version) >= STRONGLY_TYPED_SINCE:
        return {"network": ["STRONGLY_TYPED"], "builder": []}
    builder = {"fp16": ["FP16"], "int8-static": ["INT8", "FP16"]}.get(precision, [])
    return {"network": ["EXPLICIT_BATCH"], "builder": builder}


def engine_key(model_sha256: str, gpu_name: str, compute_capability: str, trt_version: str) -> str:
    """Cache key of an engine: the model, the GPU and the TensorRT version it was built for."""
    gpu = "".join(ch if ch.isalnum() else "-" for ch in gpu_name).strip("-").lower() or "gpu"
    return f"{model_sha256[:16]}-{gpu}-sm{compute_capability.replace('.', '')}-trt{trt_version}"


def build_engine(onnx_path: Path, settings: dict[str, Any], timing_cache: Path | None = None) -> bytes:
    """Serialized engine for ``onnx_path`` under ``settings`` (profiles, workspace_bytes, ...)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    chosen = network_flags(str(trt.__version__), str(settings.get("precision", "fp32")))
    flags = 0
    for name in chosen["network"]:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser refused the model: {errors or 'no detail'}")
    config = builder.create_builder_config()
    for name in chosen["builder"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
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
