"""What a build writes about itself: the runner's template context and the manifest, from project + target + build."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import onnx

from gpuxc import __version__
from gpuxc.build.project import Project
from gpuxc.bundle import layout
from gpuxc.bundle.files import file_entries
from gpuxc.bundle.manifest import (
    ArtifactInfo,
    BuildInfo,
    HostInfo,
    Manifest,
    ReferenceInfo,
    RuntimeInfo,
    ServingInfo,
    SourceInfo,
    VariantInfo,
    Verification,
)
from gpuxc.bundle.requirements import preprocessing_requirements, serve_requirements, version_of
from gpuxc.host import host_isa, openvino_capabilities
from gpuxc.project.config import GpuxConfig
from gpuxc.project.model import describe
from gpuxc.project.signature import bundle_io
from gpuxc.targets import Artifact, RuntimeSpec, Target, Variant


def runner_context(
    config: GpuxConfig, target: Target, runtime: RuntimeSpec, verification: Verification,
    fallback_requirements: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The runner templates' context: no string of the project but its name and version reaches it.
    ``fallback_requirements``: the fallback variants' runtime requirements (requirements.txt is the union)."""
    requirements = runtime.requirements + (fallback_requirements or [])
    return {
        "gpuxc_version": __version__,
        "target": target.name,
        "name": config.name,
        "version": config.version,
        "verification_status": verification.status,
        "verification_reason": verification.reason,
        "requirements": list(dict.fromkeys(requirements + preprocessing_requirements(config.preprocessing.kind))),
        "serve_requirements": [] if runtime.serves_page else serve_requirements(config.preprocessing.kind),
        "preprocessing": config.preprocessing.kind,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "port": config.serving.port,
        "image": f"{config.name}-{target.name}",
    }


def artifact_info(artifact: Artifact) -> ArtifactInfo:
    return ArtifactInfo(entry=artifact.entry, format=artifact.format, settings=artifact.settings,
                        requires_isa=list(artifact.settings.get("requires_isa") or []))  # fmt: skip


def runtime_info(config: GpuxConfig, runtime: RuntimeSpec) -> RuntimeInfo:
    settings = {
        "backend": config.runtime.gpu.backend,
        "gpu_memory": config.runtime.gpu.memory,
        "timeout": config.runtime.timeout,
        "enable_profiling": config.runtime.enable_profiling,
        "batch_size": config.runtime.batch_size,
        **runtime.settings,
    }
    return RuntimeInfo(
        adapter=runtime.adapter,
        requirements=runtime.requirements,
        providers=runtime.providers,
        # The pins come from this host, whose wheels may need its Python (numpy 2.4 needs 3.11+).
        python_requires=f">={sys.version_info.major}.{sys.version_info.minor}",
        settings=settings,
    )


def variant_info(config: GpuxConfig, target: str, module: str, variant: Variant, artifact: Artifact,
                 runtime: RuntimeSpec, verification: Verification, note: str | None = None) -> VariantInfo:  # fmt: skip
    """One entry of the manifest's ``variants`` (a multi-variant bundle, build.fallback)."""
    return VariantInfo(target=target, module=module, artifact=artifact_info(artifact),
                       runtime=runtime_info(config, runtime), verification=verification,
                       precision=variant.precision, variant=variant.name, note=note)  # fmt: skip


def assemble_manifest(project: Project, target: Target, build: BuildInfo, artifact: Artifact, runtime: RuntimeSpec,
                      verification: Verification, model: onnx.ModelProto, stage: Path,
                      fallbacks: list[VariantInfo] | None = None) -> Manifest:  # fmt: skip
    """The manifest of the bundle staged at ``stage`` (its ``files`` are hashed from there). With
    ``fallbacks``, ``variants`` lists the primary (the top-level fields) and then them, in order."""
    config = project.config
    sig = project.model.signature
    # Only the shipped model's inputs/outputs are needed here; every file's digest is in `files`.
    passed = describe(model, sha256="", size_bytes=0, external=[])
    primary_artifact, primary_runtime = artifact_info(artifact), runtime_info(config, runtime)
    variants = []
    if fallbacks:
        primary = VariantInfo(target=target.name, module="runtime", artifact=primary_artifact,
                              runtime=primary_runtime, verification=verification, precision=build.precision,
                              variant=build.variant)  # fmt: skip
        variants = [primary, *fallbacks]
    openvino = "openvino" in {target.name, *(v.target for v in variants)}
    return Manifest(
        gpuxc_version=__version__,
        name=config.name,
        version=config.version,
        description=config.description,
        target=target.name,
        source=SourceInfo(file=project.model.path.name, sha256=sig.sha256, size_bytes=sig.size_bytes,
                          upgrade=project.model.upgrade),
        config=config.canonical(),
        signature=sig,
        inputs=bundle_io(config, passed.inputs, "inputs"),
        outputs=bundle_io(config, passed.outputs, "outputs"),
        preprocessing=project.preprocessing,
        metadata=config.metadata,
        build=build,
        artifact=primary_artifact,
        runtime=primary_runtime,
        serving=ServingInfo(
            host=config.serving.host,
            port=config.serving.port,
            timeout=config.serving.timeout,
            max_workers=config.serving.max_workers,
            max_concurrency=config.serving.max_concurrency,
            max_body_bytes=config.serving.max_body_bytes,
            max_batch_size=config.serving.batch_limit,
            max_queue_delay=config.serving.max_queue_delay,
            self_check=config.serving.self_check,
        ),  # fmt: skip
        reference=ReferenceInfo(
            inputs=layout.REFERENCE_INPUTS,
            outputs=layout.REFERENCE_OUTPUTS,
            origin=project.reference_origin,
            seed=config.build.seed,
            shapes=project.reference_shapes,
            runtime=project.reference_runtime,
            fallbacks=project.reference_fallbacks,
            cross_check=project.reference_cross_check,
            calibration_overlap=project.calibration_overlap,
        ),  # fmt: skip
        verification=verification,
        variants=variants,
        host=HostInfo(
            platform=platform.system().lower(),
            machine=platform.machine(),
            python=".".join(map(str, sys.version_info[:3])),
            libraries={d: v for d in ("onnx", "onnxruntime", "numpy") if (v := version_of(d))},
            isa=host_isa(),
            openvino_capabilities=openvino_capabilities() if openvino else None,
        ),
        files=file_entries(stage),
    )
