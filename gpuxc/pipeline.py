"""The compile pipeline: plan → passes → target compile → verify → bundle.

gpux.yml + model.onnx
  config.load_config, model.load_model, signature.check_signature
  reference inputs/outputs (ONNX Runtime on the source model)
  for each target:
    target.plan           -> pass specs
    PassManager.run       -> model' + provenance
    target.compile        -> artifact files in a staging bundle
    target.execute + compare.compare -> verification (gate), or "unverified: why"
    runner, reference, manifest -> atomic move to <out>/<name>-<version>-<target>
"""

from __future__ import annotations

import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydantic import ValidationError

from gpuxc import __version__, bundle
from gpuxc.compare import DEFAULT_TOLERANCE, compare
from gpuxc.config import GpuxConfig, did_you_mean, find_config, load_config
from gpuxc.errors import (
    CompileError,
    ConfigError,
    GpuxcError,
    ModelError,
    ReferenceError_,
    TargetUnavailable,
    VerificationFailed,
    first_line,
)
from gpuxc.manifest import (
    ArtifactInfo,
    BuildInfo,
    HostInfo,
    Manifest,
    ReferenceInfo,
    RuntimeInfo,
    ServingInfo,
    SourceInfo,
    Verification,
)
from gpuxc.model import LoadedModel, describe, load_model, sha256_file
from gpuxc.passes import PassContext, PassManager
from gpuxc.plugin import get_registry
from gpuxc.reference import (
    DEFAULT_DIM,
    DEFAULT_SPATIAL,
    FALLBACK_SIZES,
    load_calibration_sample,
    make_inputs,
    resolve_shapes,
    run_onnxruntime,
)
from gpuxc.runtime_versions import SERVE_DISTS, pinned, version_of
from gpuxc.signature import bundle_io, check_signature
from gpuxc.target import CompileContext, Target

Progress = Callable[[str], None]


@dataclass
class BundleResult:
    target: str
    path: Path
    verification: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "path": str(self.path), "verification": self.verification}


@dataclass
class Project:
    """A loaded project: config, model and reference data, shared by every target."""

    config: GpuxConfig
    model: LoadedModel
    reference_inputs: dict[str, np.ndarray]
    reference_outputs: dict[str, np.ndarray]
    reference_origin: str
    reference_shapes: dict[str, list[int]] = field(default_factory=dict)


def load_project(path: Path, config_path: Path | None = None, progress: Progress | None = None) -> Project:
    say = progress or (lambda _msg: None)
    config = load_config(find_config(path, config_path))
    say(f"config {config.path.name}: {config.name} {config.version}")
    model_path = config.model_path
    if not model_path.is_file():
        raise ModelError(f"{config.where('model', 'source')}: model file '{config.model.source}' not found")
    try:
        loaded = load_model(model_path)
    except ModelError as exc:
        raise type(exc)(f"{config.where('model', 'source')}: {exc.message}", hint=exc.hint) from None
    sig = loaded.signature
    say(f"model {model_path.name}: {len(sig.inputs)} inputs, {len(sig.outputs)} outputs, {sig.node_count} nodes, "
        f"opsets {sig.opsets}")  # fmt: skip
    check_signature(config, sig)
    say("reference: ONNX Runtime on the source model")
    if config.build.calibration is not None and config.build.calibration.data is not None:
        inputs = load_calibration_sample(config, sig)
        outputs = run_onnxruntime(model_path, inputs)
        shapes = {k: list(v.shape) for k, v in inputs.items()}
        return Project(config, loaded, inputs, outputs, "calibration", shapes)
    inputs, outputs, shapes = _generated_reference(config, loaded, say)
    return Project(config, loaded, inputs, outputs, "generated", shapes)


def _generated_reference(config: GpuxConfig, loaded: LoadedModel, say: Progress) -> tuple[Any, Any, Any]:
    """Generated inputs and their outputs; unknown dims fall back through FALLBACK_SIZES."""
    sig = loaded.signature
    first_error: ReferenceError_ | None = None
    tried: list[dict[str, list[int]]] = []
    for defaults in [(DEFAULT_DIM, DEFAULT_SPATIAL), *FALLBACK_SIZES]:
        shapes = resolve_shapes(sig, config, defaults)
        if shapes in tried:
            continue  # no dim depends on the defaults: another try would fail the same way
        tried.append(shapes)
        inputs = make_inputs(sig, config, loaded.proto, shapes)
        try:
            return inputs, run_onnxruntime(loaded.path, inputs), shapes
        except ReferenceError_ as exc:
            first_error = first_error or exc
            say(f"reference: source model failed at {shapes}; trying other sizes for unknown dims")
    assert first_error is not None
    raise first_error


def compile_project(
    path: Path,
    targets: list[str] | None = None,
    out: Path | None = None,
    config_path: Path | None = None,
    progress: Progress | None = None,
) -> list[BundleResult]:
    """Compile the project at ``path`` for each target; returns one result per bundle written."""
    say = progress or (lambda _msg: None)
    registry = get_registry()
    project = load_project(path, config_path, say)
    config = project.config
    _check_target_options(config, registry.targets)
    names = targets or config.build.targets
    for index, name in enumerate(names):
        if name not in registry.targets:
            where = f"{config.where('build', 'targets', index)}: " if not targets else ""
            known = ", ".join(sorted(registry.targets))
            raise TargetUnavailable(
                f"{where}unknown target '{name}'{did_you_mean(name, registry.targets)}; known targets: {known}"
            )
    out_dir = (out or Path("dist")).resolve()
    return [compile_target(project, registry.targets[name](), out_dir, say) for name in names]


def compile_target(project: Project, target: Target, out_dir: Path, say: Progress) -> BundleResult:
    config = project.config
    availability = target.check_available()
    if not availability.available:
        hint = availability.install_hint or target.install_hint
        raise TargetUnavailable(f"target '{target.name}' is not available here: {availability.reason}", hint=hint)
    options = _target_options(config, target)
    specs = target.plan(config, project.model.signature, options)
    final = out_dir / bundle.bundle_name(config.name, config.version, target.name)
    say(f"[{target.name}] plan: {', '.join(s.name for s in specs) or 'no passes'}")
    with tempfile.TemporaryDirectory(prefix="gpuxc-work-") as work, bundle.staging_dir(final) as stage:
        workdir = Path(work)
        proto = onnx.ModelProto()
        proto.CopyFrom(project.model.proto)
        ctx = PassContext(workdir=workdir, target=target.name, model_dir=project.model.path.parent)
        model, records = PassManager(get_registry()).run(
            proto, specs, ctx, progress=lambda m: say(f"[{target.name}] {m}")
        )
        say(f"[{target.name}] compile")
        try:
            artifact = target.compile(model, CompileContext(config, project.model.signature, options, stage, workdir))
        except GpuxcError:
            raise
        except Exception as exc:
            raise CompileError(
                f"target '{target.name}' failed: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        verification = _verify(project, target, stage, artifact, say)
        if verification.status == "failed":
            raise VerificationFailed(
                f"[{target.name}] output differs from the source model beyond tolerance: {verification.failures[0]}"
                + (f" (and {len(verification.failures) - 1} more)" if len(verification.failures) > 1 else ""),
                hint="loosen build.tolerance only if the difference is acceptable for your model",
            )
        bundle.write_reference(stage, project.reference_inputs, project.reference_outputs)
        runtime = target.runtime(options, artifact)
        context = {
            "gpuxc_version": __version__,
            "target": target.name,
            "name": config.name,
            "version": config.version,
            "verification_status": verification.status,
            "verification_reason": verification.reason,
            "requirements": runtime.requirements,
            "serve_requirements": pinned(SERVE_DISTS),
        }
        extra = (target.template_dir,) if target.template_dir else ()
        bundle.write_runner(stage, context, runtime.adapter, extra)
        manifest = _manifest(project, target, options, records, artifact, runtime, verification, model, stage)
        bundle.write_manifest(stage, manifest)
        bundle.publish(stage, final)
    say(f"[{target.name}] bundle {final} ({verification.status})")
    return BundleResult(
        target.name, final, verification.model_dump(include={"status", "reason", "runtime", "failures"})
    )


def tolerance_for(config: GpuxConfig) -> dict[str, float]:
    base = dict(DEFAULT_TOLERANCE["int8" if config.build.precision.startswith("int8") else
                                  "fp16" if config.build.precision == "fp16" else "fp32"])  # fmt: skip
    base.update({k: v for k, v in config.build.tolerance.model_dump().items() if v is not None})
    return base


def _verify(project: Project, target: Target, stage: Path, artifact: Any, say: Progress) -> Verification:
    tolerance = tolerance_for(project.config)
    reason = target.verification_unsupported()
    if reason is not None:
        say(f"[{target.name}] verify: skipped ({reason})")
        return Verification(status="unverified", reason=reason, tolerance=tolerance)
    say(f"[{target.name}] verify against the reference outputs")
    actual = target.execute(stage, artifact, project.reference_inputs)
    class_outputs = {s.name for s in project.config.outputs if s.labels}
    report = compare(project.reference_outputs, actual, tolerance, class_outputs)
    return Verification(
        status=report["status"],
        reason=None if report["status"] == "passed" else "; ".join(report["failures"][:3]),
        runtime=target.verification_runtime(),
        tolerance=tolerance,
        outputs=report["outputs"],
        failures=report["failures"],
    )


def _manifest(project: Project, target: Target, options: Any, records: list[Any], artifact: Any, runtime: Any,
              verification: Verification, model: onnx.ModelProto, stage: Path) -> Manifest:  # fmt: skip
    config = project.config
    sig = project.model.signature
    passed = describe(model, sha256=sha256_file(stage / artifact.entry), size_bytes=0, external=[])
    settings = {
        "backend": config.runtime.gpu.backend,
        "gpu_memory": config.runtime.gpu.memory,
        "timeout": config.runtime.timeout,
        "enable_profiling": config.runtime.enable_profiling,
        "batch_size": config.runtime.batch_size,
        **runtime.settings,
    }
    return Manifest(
        gpuxc_version=__version__,
        name=config.name,
        version=config.version,
        description=config.description,
        target=target.name,
        source=SourceInfo(file=project.model.path.name, sha256=sig.sha256, size_bytes=sig.size_bytes),
        config=config.canonical(),
        signature=sig,
        inputs=bundle_io(config, passed.inputs, "inputs"),
        outputs=bundle_io(config, passed.outputs, "outputs"),
        metadata=config.metadata,
        build=BuildInfo(
            precision=config.build.precision,
            optimization_level=config.build.optimization_level,
            target_options=options.model_dump(mode="json"),
            passes=records,
        ),
        artifact=ArtifactInfo(entry=artifact.entry, format=artifact.format, settings=artifact.settings),
        runtime=RuntimeInfo(
            adapter=runtime.adapter,
            requirements=runtime.requirements,
            providers=runtime.providers,
            # The pins come from this host, whose wheels may need its Python (numpy 2.4 needs 3.11+).
            python_requires=f">={sys.version_info.major}.{sys.version_info.minor}",
            settings=settings,
        ),
        serving=ServingInfo(
            host=config.serving.host,
            port=config.serving.port,
            timeout=config.serving.timeout,
            max_workers=config.serving.max_workers,
        ),  # fmt: skip
        reference=ReferenceInfo(
            inputs="reference/inputs.npz",
            outputs="reference/outputs.npz",
            origin=project.reference_origin,
            seed=config.build.seed,  # type: ignore[arg-type]
            shapes=project.reference_shapes,
        ),  # fmt: skip
        verification=verification,
        host=HostInfo(
            platform=platform.system().lower(),
            machine=platform.machine(),
            python=".".join(map(str, sys.version_info[:3])),
            libraries={d: v for d in ("onnx", "onnxruntime", "numpy") if (v := version_of(d))},
        ),
        files=bundle.file_entries(stage),
    )


def _check_target_options(config: GpuxConfig, targets: dict[str, Any]) -> None:
    for name in config.build.options:
        if name not in targets:
            raise ConfigError(
                f"{config.where('build', 'options', name, key=True)}: options for unknown target '{name}'"
                f"{did_you_mean(name, targets)}"
            )


def _target_options(config: GpuxConfig, target: Target) -> Any:
    raw = config.build.options.get(target.name, {})
    try:
        return target.Options.model_validate(raw)
    except ValidationError as exc:
        err = next((e for e in exc.errors(include_url=False) if e["type"] == "extra_forbidden"), exc.errors()[0])
        loc = ("build", "options", target.name, *err["loc"])
        dotted = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(str(err["loc"][-1]), target.Options.model_fields)
            raise ConfigError(f"{config.where(*loc, key=True)}: unknown option '{dotted}'{hint}") from None
        raise ConfigError(f"{config.where(*loc)}: {dotted}: {err['msg']}") from None
