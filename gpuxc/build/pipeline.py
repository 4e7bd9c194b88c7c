"""The compile pipeline: plan → passes → target compile → verify → bundle.

gpux.yml + model.onnx
  config_load.load_config, model.load_model, signature.check_signature
  reference inputs/outputs (ONNX Runtime on the source model)
  for each target:
    target.plan           -> pass specs
    PassManager.run       -> model' + provenance
    target.compile        -> artifact files in a staging bundle
    target.execute + compare.compare -> verification (gate), or "unverified: why"
    runner, reference, manifest -> atomic move to <out>/<name>-<version>-<target>
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydantic import ValidationError

from gpuxc import __version__
from gpuxc.build.memory import MemoryEstimate, activation_bytes
from gpuxc.build.memory import estimate as memory_estimate

# isolation: the untrusted model's first load and ONNX Runtime session run in a child process.
from gpuxc.bundle import layout
from gpuxc.bundle import writer as bundle
from gpuxc.bundle.compare import DEFAULT_TOLERANCE, compare, worst_of
from gpuxc.bundle.manifest import (
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
from gpuxc.bundle.requirements import SERVE_DISTS, pinned, version_of
from gpuxc.bundle.writer import BundleResult
from gpuxc.cache import restore as warm
from gpuxc.errors import (
    CompileError,
    ConfigError,
    GpuxcError,
    MemoryBudgetExceeded,
    ModelError,
    ReferenceError_,
    TargetUnavailable,
    VerificationFailed,
    did_you_mean,
    first_line,
)
from gpuxc.ort_session import run_onnxruntime
from gpuxc.passes import PassContext, PassManager, PassRecord
from gpuxc.plugin import get_registry
from gpuxc.project import isolation
from gpuxc.project.calibration import load_calibration_sample, load_samples
from gpuxc.project.config import GpuxConfig
from gpuxc.project.config_load import find_config, load_config
from gpuxc.project.model import LoadedModel, describe
from gpuxc.project.reference import (
    DEFAULT_DIM,
    DEFAULT_SPATIAL,
    FALLBACK_SIZES,
    generate,
    index_bounds,
    make_inputs,
    resolve_shapes,
)
from gpuxc.project.signature import bundle_io, check_signature
from gpuxc.sizes import format_size_decimal as human
from gpuxc.targets import Artifact, CompileContext, Target, Variant

Progress = Callable[[str], None]
# Lossy variants are verified on the reference input plus this many more.
EXTRA_SAMPLES = 4


@dataclass
class Project:
    """A loaded project: config, model and reference data, shared by every target."""

    config: GpuxConfig
    model: LoadedModel
    reference_inputs: dict[str, np.ndarray]
    reference_outputs: dict[str, np.ndarray]
    reference_origin: str
    reference_shapes: dict[str, list[int]] = field(default_factory=dict)

    @functools.cached_property
    def extra_references(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """(inputs, source outputs) beyond the reference, for judging lossy variants: later
        calibration samples when the project has calibration data, else generated inputs (other
        seeds, the reference's shapes). Computed once, shared by every candidate and target."""
        cal = self.config.build.calibration
        if cal is not None and cal.data is not None:
            data = (self.config.project_dir / cal.data).resolve()
            feeds = load_samples(data, self.model.signature, EXTRA_SAMPLES + 1)[1:]
        else:
            bounds = index_bounds(self.model.proto)
            seed = self.config.build.seed
            feeds = [generate(self.model.signature, self.reference_shapes, seed + 7919 * (i + 1), bounds)
                     for i in range(EXTRA_SAMPLES)]  # fmt: skip
        return [(f, run_onnxruntime(self.model.path, f)) for f in feeds]

    @functools.cached_property
    def activation_bytes(self) -> int:
        return activation_bytes(self.model.proto, self.reference_shapes)


def load_project(path: Path, config_path: Path | None = None, progress: Progress | None = None) -> Project:
    say = progress or (lambda _msg: None)
    config = load_config(find_config(path, config_path))
    say(f"config {config.path.name}: {config.name} {config.version}")
    return project_for(config, say)


def project_for(config: GpuxConfig, say: Progress) -> Project:
    """Load the model of ``config``, check it against the config, compute the reference."""
    try:
        model_path = config.model_path
        found = model_path.is_file()
    except OSError as exc:  # a name too long for the file system, a permission denied on the way
        raise ModelError(f"{config.where('model', 'source')}: model file '{config.model.source}' cannot be "
                         f"opened ({exc.strerror})") from None  # fmt: skip
    if not found:
        raise ModelError(f"{config.where('model', 'source')}: model file '{config.model.source}' not found")
    try:
        loaded = isolation.load_model(model_path)
    except ModelError as exc:
        raise type(exc)(f"{config.where('model', 'source')}: {exc.message}", hint=exc.hint) from None
    sig = loaded.signature
    say(f"model {model_path.name}: {len(sig.inputs)} inputs, {len(sig.outputs)} outputs, {sig.node_count} nodes, "
        f"opsets {sig.opsets}")  # fmt: skip
    check_signature(config, sig)
    say("reference: ONNX Runtime on the source model")
    if config.build.calibration is not None and config.build.calibration.data is not None:
        inputs = load_calibration_sample(config, sig)
        outputs = isolation.run_onnxruntime(model_path, inputs)
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
            return inputs, isolation.run_onnxruntime(loaded.path, inputs), shapes
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
    precision: str | None = None,
    optimize: str | None = None,
    archive: bool = False,
    cache_dir: Path | None = None,
    use_cache: bool = True,
) -> list[BundleResult]:
    """Compile the project at ``path`` for each target; returns one result per bundle written.

    ``precision`` and ``optimize`` override build.precision and build.optimize (CLI flags).
    With the build cache (``use_cache``, not ``$GPUXC_NO_CACHE``), a target whose key is cached
    is restored from the cache (digest-checked) without loading the model; the others are built
    and stored.
    """
    say = progress or (lambda _msg: None)
    registry = get_registry()
    config = warm.load_build_config(path, config_path, precision, optimize)
    say(f"config {config.path.name}: {config.name} {config.version}")
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
    cache = warm.open_cache(cache_dir, use_cache, say)
    project: Project | None = None
    results = []
    for name in names:
        target = registry.targets[name]()
        _target_options(config, target)  # a bad option is an error, cached or not
        key = warm.build_key(config, name, archive) if cache else None
        if cache and key and (hit := warm.lookup(cache, key, config, name, out_dir, say)):
            results.append(hit)
            continue
        project = project or project_for(config, say)
        store = None
        if cache and key:
            store = functools.partial(warm.store, cache, key, config, project.model.signature.external_data)
        results.append(compile_target(project, target, out_dir, say, reproducible=archive, store=store))
    if archive:
        bundle.write_archives(results, say)
    return results


# --optimize auto timing: interleaved rounds, each a median over enough runs to fill ~0.2 s.
AUTO_ROUNDS = 5
AUTO_ROUND_SECONDS = 0.2
AUTO_MAX_RUNS = 100
# A candidate must beat fp32 by this much to be kept: a smaller gain is timing noise.
AUTO_MIN_GAIN = 0.05


@dataclass
class Candidate:
    """One variant built, verified and (under auto) timed."""

    variant: Variant
    root: Path  # bundle-shaped folder holding model/
    status: str = "pending"  # passed | failed | skipped | error | over-budget | unverified
    reason: str | None = None
    model: onnx.ModelProto | None = None
    records: list[PassRecord] = field(default_factory=list)
    artifact: Artifact | None = None
    verification: Verification | None = None
    memory: MemoryEstimate | None = None
    latency_ms: float | None = None

    def summary(self, baseline_ms: float | None) -> dict[str, Any]:
        metrics = self.verification.outputs if self.verification else {}
        cosines = [m["cosine"] for m in metrics.values() if isinstance(m, dict) and "cosine" in m]
        max_abs = [m["max_abs"] for m in metrics.values() if isinstance(m, dict) and "max_abs" in m]
        size = sum(p.stat().st_size for p in (self.root / layout.MODEL_DIR).rglob("*") if p.is_file()) if self.artifact else None
        return {
            "name": self.variant.name,
            "precision": self.variant.precision,
            "status": self.status,
            "reason": self.reason,
            "latency_ms": self.latency_ms,
            "speedup_vs_fp32": (baseline_ms / self.latency_ms) if baseline_ms and self.latency_ms else None,
            "min_cosine": min(cosines) if cosines else None,
            "max_abs": max(max_abs) if max_abs else None,
            "size_bytes": size,
            "memory_bytes": self.memory.total_bytes if self.memory else None,
            "passes": [r.name for r in self.records if r.status == "applied"],
        }


def compile_target(
    project: Project,
    target: Target,
    out_dir: Path,
    say: Progress,
    reproducible: bool = False,
    store: Callable[[Path, str, dict[str, Any]], None] | None = None,
) -> BundleResult:
    """Build, verify and publish one target's bundle. ``store(stage, variant, verification)`` sees
    the finished staging folder just before it is published (the build cache keeps a copy)."""
    config = project.config
    availability = target.check_available()
    if not availability.available:
        hint = availability.install_hint or target.install_hint
        raise TargetUnavailable(f"target '{target.name}' is not available here: {availability.reason}", hint=hint)
    options = _target_options(config, target)
    auto = config.build.optimize == "auto" or config.build.precision == "auto"
    variants = target.variants(config, options, auto)
    final = out_dir / bundle.bundle_name(config.name, config.version, target.name)

    def tsay(message: str) -> None:
        say(f"[{target.name}] {message}")

    with tempfile.TemporaryDirectory(prefix="gpuxc-work-") as work, bundle.staging_dir(final) as stage:
        workdir = Path(work)
        if len(variants) == 1:
            chosen = _build_candidate(project, target, options, variants[0], stage, workdir, tsay)
            summaries: list[dict[str, Any]] = []
            _check_budget(project, [chosen], tsay, fixed=True)
            if chosen.status == "failed":
                raise VerificationFailed(_failure_message(target, chosen), hint=_failure_hint(chosen))
        else:
            candidates = [
                _try_candidate(project, target, options, v, stage / layout.CANDIDATES_DIR / v.name, workdir, tsay, i == 0)
                for i, v in enumerate(variants)
            ]
            _check_budget(project, candidates, tsay, fixed=False)
            chosen = _choose(target, candidates, project.reference_inputs, tsay)
            summaries = [c.summary(candidates[0].latency_ms) for c in candidates]  # before the folders go
            os.rename(chosen.root / layout.MODEL_DIR, stage / layout.MODEL_DIR)
            shutil.rmtree(stage / layout.CANDIDATES_DIR)
            chosen.root = stage
        assert chosen.artifact is not None and chosen.verification is not None and chosen.model is not None
        _print_report(chosen.verification, tsay)
        bundle.write_reference(stage, project.reference_inputs, project.reference_outputs)
        runtime = target.runtime(options, chosen.artifact)
        context = {
            "gpuxc_version": __version__,
            "target": target.name,
            "name": config.name,
            "version": config.version,
            "verification_status": chosen.verification.status,
            "verification_reason": chosen.verification.reason,
            "requirements": runtime.requirements,
            "serve_requirements": pinned(SERVE_DISTS),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "port": config.serving.port,
            "image": f"{config.name}-{target.name}",
        }
        extra = (target.template_dir,) if target.template_dir else ()
        bundle.write_runner(stage, context, runtime.adapter, extra)
        if reproducible:
            # Durations differ from build to build: printed above, not recorded in a reproducible manifest.
            chosen.records = [r.model_copy(update={"seconds": 0.0}) for r in chosen.records]
            summaries = [{**c, "latency_ms": None, "speedup_vs_fp32": None} for c in summaries]
        build = BuildInfo(
            precision=chosen.variant.precision,
            optimization_level=config.build.optimization_level,
            target_options=options.model_dump(mode="json"),
            passes=chosen.records,
            optimize="auto" if len(variants) > 1 else "fixed",
            variant=chosen.variant.name,
            candidates=summaries,
            memory=chosen.memory.model_dump() if chosen.memory else None,
        )
        manifest = _manifest(project, target, build, chosen.artifact, runtime, chosen.verification, chosen.model, stage)
        bundle.write_manifest(stage, manifest)
        verification = chosen.verification.model_dump(mode="json", include=RESULT_VERIFICATION)
        if store is not None:
            store(stage, chosen.variant.name, verification)
        bundle.publish(stage, final)
    tsay(f"bundle {final} ({chosen.variant.name}, verification {chosen.verification.status})")
    return BundleResult(target.name, final, verification, variant=chosen.variant.name)


# What a BundleResult (and `compile --json`) reports of the verification.
RESULT_VERIFICATION = {"status", "reason", "runtime", "failures"}


def _build_candidate(
    project: Project,
    target: Target,
    options: Any,
    variant: Variant,
    root: Path,
    workdir: Path,
    say: Progress,
    search: bool = False,
) -> Candidate:
    """Passes, compile and verification of one variant into ``root``."""
    config = project.config
    candidate = Candidate(variant, root)
    specs = target.plan(config, project.model.signature, options, variant)
    say(f"{variant.name}: plan {', '.join(s.name for s in specs) or 'no passes'}")
    scratch = workdir / variant.name
    scratch.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    proto = onnx.ModelProto()
    proto.CopyFrom(project.model.proto)
    ctx = PassContext(workdir=scratch, target=target.name, model_dir=project.model.path.parent,
                      project_dir=config.project_dir, reference_shapes=project.reference_shapes)  # fmt: skip
    manager = PassManager(get_registry())
    model, records = manager.run(proto, specs, ctx, progress=lambda m: say(f"{variant.name}: {m}"))
    candidate.model, candidate.records = model, records
    skipped = _skipped_precision_pass(records)
    if skipped is not None and search:
        # e.g. int8-dynamic on a CNN: nothing to quantize, so this would be the fp32 build again.
        # (A fixed build still ships it: the manifest records the pass as skipped and why.)
        candidate.status, candidate.reason = "skipped", skipped
        say(f"{variant.name}: skipped ({skipped})")
        return candidate
    say(f"{variant.name}: compile")
    cctx = CompileContext(config, project.model.signature, options, root, scratch, variant, dict(manager.artifacts))
    try:
        candidate.artifact = target.compile(model, cctx)
    except GpuxcError:
        raise
    except Exception as exc:
        raise CompileError(f"target '{target.name}' failed: {type(exc).__name__}: {first_line(exc)}") from exc
    candidate.verification = _verify(project, target, root, candidate.artifact, variant, say)
    candidate.status = candidate.verification.status
    candidate.reason = candidate.verification.reason
    candidate.memory = memory_estimate(model, project.activation_bytes, variant.precision)
    return candidate


def _try_candidate(
    project: Project,
    target: Target,
    options: Any,
    variant: Variant,
    root: Path,
    workdir: Path,
    say: Progress,
    baseline: bool,
) -> Candidate:
    """An auto candidate: a build failure is a result to report, except for the baseline."""
    try:
        return _build_candidate(project, target, options, variant, root, workdir, say, search=True)
    except GpuxcError as exc:  # a pass, the target, or its runtime refusing the result
        if baseline:
            raise
        say(f"{variant.name}: failed ({exc})")
        return Candidate(variant, root, status="error", reason=str(exc))


LOSSY_PASSES = {"fp16", "quantize-dynamic", "quantize-static"}


def _skipped_precision_pass(records: list[PassRecord]) -> str | None:
    for record in records:
        if record.name in LOSSY_PASSES and record.status == "skipped":
            return f"{record.name}: {record.reason}"
    return None


def _failure_message(target: Target, candidate: Candidate) -> str:
    verification = candidate.verification
    assert verification is not None
    lossy = [r.name for r in candidate.records if r.name in LOSSY_PASSES and r.status == "applied"]
    by = f" after pass {', '.join(lossy)}" if lossy else ""
    more = f" (and {len(verification.failures) - 1} more)" if len(verification.failures) > 1 else ""
    return (
        f"[{target.name}] {candidate.variant.name} output differs from the source model beyond tolerance{by}: "
        f"{verification.failures[0]}{more}"
    )


def _failure_hint(candidate: Candidate) -> str:
    if candidate.variant.precision != "fp32":
        return "try build.optimize: auto (keeps the fastest variant inside tolerance) or a higher precision"
    return "loosen build.tolerance only if the difference is acceptable for your model"


def _print_report(verification: Verification, say: Progress) -> None:
    """The verification report as a table on stderr (the manifest holds the same numbers)."""
    if verification.status == "unverified":
        say(f"verification: unverified ({verification.reason})")
        return
    say(f"  {'output':<20} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'top-1':>7} {'mismatches':>10}")
    for name, m in verification.outputs.items():
        cells = [_cell(m, "max_abs", ".3g"), _cell(m, "max_rel", ".3g"), _cell(m, "cosine", ".6f")]
        say(
            f"  {name[:20]:<20} {cells[0]:>10} {cells[1]:>10} {cells[2]:>10} "
            f"{_cell(m, 'top1_agreement', '.3f'):>7} {_cell(m, 'mismatches', 'd'):>10}"
        )
    say(f"verification {verification.status}")


def _cell(metrics: dict[str, Any], key: str, fmt: str) -> str:
    value = metrics.get(key)
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def _check_budget(project: Project, candidates: list[Candidate], say: Progress, fixed: bool) -> None:
    budget = project.config.runtime.gpu.memory_bytes
    if budget is None:
        return
    where = project.config.where("runtime", "gpu", "memory")
    for c in candidates:
        if c.memory is not None and c.memory.total_bytes > budget:
            if fixed:
                weights, acts = c.memory.weights_bytes, c.memory.activations_bytes
                advice = {  # weights scale with precision; activations stay fp32 at the boundaries
                    "fp16": weights // 2 + acts,
                    "int8": weights // 4 + acts,
                }
                fits = [p for p, need in advice.items() if need <= budget and p != c.variant.precision[:4]]
                hint = (
                    f"{' or '.join(fits)} would fit (estimated {', '.join(human(advice[p]) for p in fits)})"
                    if fits
                    else "no precision fits: raise runtime.gpu.memory or fix smaller shapes with build.shapes"
                )
                raise MemoryBudgetExceeded(
                    f"{where}: {c.variant.name} needs an estimated {human(c.memory.total_bytes)} "
                    f"(weights {human(weights)}, activations {human(acts)}), over the {human(budget)} budget",
                    hint=hint,
                )
            c.status, c.reason = "over-budget", f"estimated {human(c.memory.total_bytes)} > {human(budget)}"
            say(f"{c.variant.name}: over the memory budget ({c.reason})")
    if not fixed and all(c.status == "over-budget" for c in candidates):
        raise MemoryBudgetExceeded(f"{where}: no candidate fits the {human(budget)} budget")


def _choose(target: Target, candidates: list[Candidate], feeds: dict[str, np.ndarray], say: Progress) -> Candidate:
    """Time the candidates that passed; keep the fastest that beats fp32 by AUTO_MIN_GAIN."""
    baseline = candidates[0]
    if baseline.status == "failed":
        raise VerificationFailed(_failure_message(target, baseline), hint=_failure_hint(baseline))
    timed = [c for c in candidates if c.status == "passed" and c.artifact is not None]
    runners = {}
    for c in timed:
        fn = target.timer(c.root, c.artifact)  # type: ignore[arg-type]
        if fn is not None:
            runners[c.variant.name] = (c, fn)
    if runners:
        _time_candidates(runners, feeds, say)
    say("candidates:")
    say(f"  {'variant':<14} {'status':<12} {'latency ms':>10} {'vs fp32':>8} {'min cosine':>11}  reason")
    for c in candidates:
        s = c.summary(baseline.latency_ms)
        lat = f"{s['latency_ms']:.3f}" if s["latency_ms"] else "-"
        ratio = f"{s['speedup_vs_fp32']:.2f}x" if s["speedup_vs_fp32"] else "-"
        cos = f"{s['min_cosine']:.6f}" if s["min_cosine"] is not None else "-"
        say(f"  {c.variant.name:<14} {c.status:<12} {lat:>10} {ratio:>8} {cos:>11}  {c.reason or ''}")
    chosen = select_candidate(candidates)
    if chosen is None:
        raise VerificationFailed(f"[{target.name}] no candidate passed verification within the memory budget")
    say(f"chose {chosen.variant.name}")
    return chosen


def select_candidate(candidates: list[Candidate]) -> Candidate | None:
    """The rule of --optimize auto, on measured candidates (the first is the fp32 baseline).

    Only candidates that passed verification (and fit the budget) are eligible. The baseline
    is kept unless another is faster by more than AUTO_MIN_GAIN: a smaller gain is noise,
    and a candidate slower than fp32 is never kept. If the baseline is over budget, the
    fastest eligible candidate wins.
    """
    baseline = candidates[0]
    eligible = [c for c in candidates if c.status == "passed" and c.latency_ms is not None]
    if baseline.status == "unverified":
        return baseline  # nothing could run here: the plain build, recorded as unverified
    if baseline.status != "passed":
        return min(eligible, key=lambda c: c.latency_ms or float("inf")) if eligible else None
    if baseline.latency_ms is None:
        return baseline  # the target cannot time here: keep the plain build
    limit = baseline.latency_ms * (1 - AUTO_MIN_GAIN)
    faster = [c for c in eligible if c is not baseline and c.latency_ms is not None and c.latency_ms < limit]
    return min(faster, key=lambda c: c.latency_ms or 0.0) if faster else baseline


def _time_candidates(runners: dict[str, tuple[Candidate, Any]], feeds: dict[str, np.ndarray], say: Progress) -> None:
    say(f"timing {len(runners)} candidate(s) on this host")
    runs: dict[str, int] = {}
    for name, (_c, fn) in runners.items():
        start = time.perf_counter()
        for _ in range(3):  # warm-up: first runs allocate and tune
            fn(feeds)
        per_run = max((time.perf_counter() - start) / 3, 1e-6)
        runs[name] = int(min(AUTO_MAX_RUNS, max(3, AUTO_ROUND_SECONDS / per_run)))
    rounds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(AUTO_ROUNDS):  # interleaved, so drift on the host hits every candidate alike
        for name, (_c, fn) in runners.items():
            samples = []
            for _ in range(runs[name]):
                start = time.perf_counter()
                fn(feeds)
                samples.append(time.perf_counter() - start)
            rounds[name].append(statistics.median(samples) * 1000.0)
    for name, (c, _fn) in runners.items():
        c.latency_ms = statistics.median(rounds[name])


def tolerance_for(config: GpuxConfig, precision: str | None = None) -> dict[str, float]:
    """The gate for a build at ``precision``: that precision's defaults, then build.tolerance."""
    precision = precision or config.build.precision
    key = "int8" if precision.startswith("int8") else "fp16" if precision == "fp16" else "fp32"
    base = dict(DEFAULT_TOLERANCE[key])
    base.update({k: v for k, v in config.build.tolerance.model_dump().items() if v is not None})
    return base


def _verify(
    project: Project, target: Target, stage: Path, artifact: Any, variant: Variant, say: Progress
) -> Verification:
    tolerance = tolerance_for(project.config, variant.precision)
    reason = target.why_unverifiable()
    if reason is not None:
        say(f"{variant.name}: verify skipped ({reason})")
        return Verification(status="unverified", reason=reason, tolerance=tolerance)
    class_outputs = {s.name for s in project.config.outputs if s.labels}
    samples = [(project.reference_inputs, project.reference_outputs)]
    if variant.precision != "fp32":
        # A lossy variant must hold on more than the one input it was chosen on.
        samples += project.extra_references
    say(f"{variant.name}: verify against the source model on {len(samples)} input(s)")
    worst: dict[str, Any] = {}
    failures: list[str] = []
    for index, (feeds, expected) in enumerate(samples):
        report = compare(expected, target.execute(stage, artifact, feeds), tolerance, class_outputs)
        failures += [f if index == 0 else f"sample {index}: {f}" for f in report["failures"]]
        for name, metrics in report["outputs"].items():
            worst[name] = worst_of(worst.get(name), metrics)
    report = {"status": "failed" if failures else "passed", "outputs": worst, "failures": failures}
    proxy = target.why_stand_in()
    status = report["status"]
    reason = None if status == "passed" else "; ".join(report["failures"][:3])
    if proxy is not None and status == "passed":
        # The graph's numerics passed on a stand-in runtime; the target's own runtime did not run.
        status, reason = "unverified", f"{proxy}; graph numerics passed on the stand-in (metrics below)"
    return Verification(
        status=status,
        reason=reason,
        runtime=target.verification_runtime(),
        tolerance=tolerance,
        samples=len(samples),
        outputs=report["outputs"],
        failures=report["failures"],
    )


def _manifest(project: Project, target: Target, build: BuildInfo, artifact: Any, runtime: Any,
              verification: Verification, model: onnx.ModelProto, stage: Path) -> Manifest:  # fmt: skip
    config = project.config
    sig = project.model.signature
    # Only the shipped model's inputs/outputs are needed here; every file's digest is in `files`.
    passed = describe(model, sha256="", size_bytes=0, external=[])
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
        build=build,
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
            max_concurrency=config.serving.max_concurrency,
            max_body_bytes=config.serving.max_body_bytes,
            max_batch_size=config.serving.batch_limit,
            max_queue_delay=config.serving.max_queue_delay,
        ),  # fmt: skip
        reference=ReferenceInfo(
            inputs=layout.REFERENCE_INPUTS,
            outputs=layout.REFERENCE_OUTPUTS,
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
