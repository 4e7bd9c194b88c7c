"""The compile pipeline: for each target, a cache hit or a build, then publish (and store).

gpux.yml (+ CLI overrides)                          cache.restore.load_build_config
  for each target:
    cached?  -> publish the cached bundle           cache.restore.build_key / lookup
    else     -> project: model + reference, once    build.project.project_for
                variants (one, or --optimize auto's candidates):
                  plan → passes → compile → verify → memory   build.candidate
                  over the memory budget?                     build.budget
                  auto: time and choose                       build.search
                fallbacks (build.fallback): each built and verified like its own build, into variants/   build.fallback
                reference data, runner, manifest    bundle.npz, bundle.writer, build.assemble
                store in the cache, then publish    cache.restore.store, bundle.writer.publish
  --archive: <bundle>.tar.gz beside each            bundle.archive
  --policy: one variant, the policy's, checked against the project and verified; no search   build.policy
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from gpuxc.build.assemble import assemble_manifest, runner_context
from gpuxc.build.budget import check_budget
from gpuxc.build.candidate import Candidate, build_candidate, failure_hint, failure_message, try_candidate
from gpuxc.build.fallback import build_fallbacks, check_fallback_targets
from gpuxc.build.options import check_option_targets, target_options
from gpuxc.build.policy import Policy, check_fits
from gpuxc.build.project import Project, project_for
from gpuxc.build.repair import ranking_json, repair, repairable
from gpuxc.build.report import print_verification
from gpuxc.build.search import choose_candidate, tune_runtime
from gpuxc.bundle import layout, npz, writer
from gpuxc.bundle.archive import write_archives
from gpuxc.bundle.manifest import BuildInfo
from gpuxc.bundle.writer import BundleResult
from gpuxc.cache import restore as warm
from gpuxc.cache.key import calibration_digest
from gpuxc.cache.store import BuildCache
from gpuxc.errors import TargetUnavailable, VerificationFailed, did_you_mean
from gpuxc.passes.plans import has_calibration
from gpuxc.plugin import get_registry
from gpuxc.project.config import GpuxConfig
from gpuxc.project.preprocessing import TextPreprocessing, tokenizer_path
from gpuxc.targets import Target, Variant

Progress = Callable[[str], None]
# The hook that keeps a copy of a finished staging folder: (stage, variant, verification).
Store = Callable[[Path, str, dict[str, Any]], None]

NO_CALIBRATION = ("no build.calibration.data: give representative inputs as a folder of .npz files (one sample "
                  "each, arrays named like the inputs) or one .npz with a leading sample axis (docs/gpux-yml.md)")
# What a BundleResult (and `compile --json`) reports of the verification.
RESULT_VERIFICATION = {"status", "reason", "runtime", "failures"}


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
    policy: Policy | None = None,
    fallback: list[str] | None = None,
) -> list[BundleResult]:
    """Compile the project at ``path`` for each target; returns one result per bundle written.

    ``precision``, ``optimize`` and ``fallback`` override build.precision, build.optimize and
    build.fallback (CLI flags).
    A ``policy`` (gpuxc/build/policy.py) builds its target's recorded variant, and sets both itself.
    With the build cache (``use_cache``, not ``$GPUXC_NO_CACHE``), a target whose key is cached
    is restored from the cache (digest-checked) without loading the model; the others are built
    and stored.
    """
    say = progress or (lambda _msg: None)
    if policy is not None:
        precision, optimize = policy.overrides(precision, optimize)
    config = warm.load_build_config(path, config_path, precision, optimize, fallback)
    say(f"config {config.path.name}: {config.name} {config.version}")
    cache = warm.open_cache(cache_dir, use_cache, say)
    return compile_config(config, targets, out, say, archive=archive, cache=cache, policy=policy,
                          fallback_from_command_line=fallback is not None)  # fmt: skip


def compile_config(
    config: GpuxConfig,
    targets: list[str] | None,
    out: Path | None,
    say: Progress,
    *,
    archive: bool = False,
    cache: BuildCache | None = None,
    policy: Policy | None = None,
    fallback_from_command_line: bool = False,
) -> list[BundleResult]:
    """:func:`compile_project` for a loaded config (overrides applied) and an opened cache (or None)."""
    registry = get_registry()
    check_option_targets(config, registry.targets)
    if policy is not None:
        policy.check_target_known(registry.targets)
        names = policy.select_targets(targets)
    else:
        names = targets or config.build.targets
        _check_target_names(config, names, registry.targets, from_command_line=bool(targets))
    check_fallback_targets(config, names, registry.targets, fallback_from_command_line)
    out_dir = (out or Path("dist")).resolve()
    project: Project | None = None
    results = []
    for name in names:
        target = registry.targets[name]()
        target_options(config, target)  # a bad option is an error, cached or not
        key = warm.build_key(config, name, archive, policy.digest if policy else None) if cache else None
        if cache and key and (hit := warm.lookup(cache, key, config, name, out_dir, say)):
            results.append(hit)
            continue
        project = project or project_for(config, say)
        store = None
        if cache and key:
            store = functools.partial(warm.store, cache, key, config, project.model.signature.external_data)
        results.append(compile_target(project, target, out_dir, say, reproducible=archive, store=store, policy=policy))
    if archive:
        write_archives(results, say)
    return results


def compile_target(
    project: Project,
    target: Target,
    out_dir: Path,
    say: Progress,
    reproducible: bool = False,
    store: Store | None = None,
    policy: Policy | None = None,
) -> BundleResult:
    """Build, verify and publish one target's bundle. ``store(stage, variant, verification)`` sees
    the finished staging folder just before it is published (the build cache keeps a copy). With a
    ``policy``, its variant alone is built (no search, no repair) and its search record is kept."""
    config = project.config
    availability = target.check_available()
    if not availability.available:
        hint = availability.install_hint or target.install_hint
        raise TargetUnavailable(f"target '{target.name}' is not available here: {availability.reason}", hint=hint)
    options = target_options(config, target)
    auto = config.build.optimize == "auto" or config.build.precision == "auto"
    variants = [policy.variant()] if policy else target.variants(config, options, auto)
    final = out_dir / layout.bundle_name(config.name, config.version, target.name)

    def tsay(message: str) -> None:
        say(f"[{target.name}] {message}")

    with tempfile.TemporaryDirectory(prefix="gpuxc-work-") as work, writer.staging_dir(final) as stage:
        if policy is not None:  # a replay carries its runtime settings (variant.settings["runtime"]): no timing
            chosen, summaries = _replay(project, target, options, policy, stage, Path(work), tsay)
        else:
            chosen, summaries = _build_variants(project, target, options, variants, stage, Path(work), tsay)
            if auto and not reproducible:  # timings are noisy: a reproducible build keeps the settings as built
                tune_runtime(target, chosen, project.reference_inputs, tsay)
        assert chosen.artifact is not None and chosen.verification is not None and chosen.model is not None
        print_verification(chosen.verification, tsay)
        fallbacks = build_fallbacks(project, stage, Path(work), tsay, _build_variants, reproducible)
        npz.write_reference(stage, project.reference_inputs, project.reference_outputs)
        if isinstance(project.preprocessing, TextPreprocessing):  # the runner tokenises with the project's file
            (stage / layout.TOKENIZER).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tokenizer_path(config), stage / layout.TOKENIZER)
        runtime = target.runtime(options, chosen.artifact)
        extra = _template_dirs(target)
        context = runner_context(config, target, runtime, chosen.verification,
                                 [r for f in fallbacks for r in f.runtime.requirements])  # fmt: skip
        writer.write_runner(stage, context, runtime.adapter, extra)
        writer.write_variant_adapters(stage, context, {f.target.name: (f.runtime.adapter, _template_dirs(f.target))
                                                       for f in fallbacks})  # fmt: skip
        if reproducible:
            # Durations differ from build to build: printed above, not recorded in a reproducible manifest.
            chosen.records = [r.model_copy(update={"seconds": 0.0}) for r in chosen.records]
            summaries = [{**c, "latency_ms": None, "speedup_vs_fp32": None} for c in summaries]
        build = BuildInfo(
            precision=chosen.variant.precision,
            optimization_level=config.build.optimization_level,
            target_options=options.model_dump(mode="json"),
            passes=chosen.records,
            optimize=policy.document.search.optimize if policy else ("auto" if len(variants) > 1 else "fixed"),
            variant=chosen.variant.name,
            candidates=summaries,
            memory=chosen.memory.model_dump() if chosen.memory else None,
            variant_settings=to_jsonable_python(chosen.variant.settings),
            calibration_sha256=calibration_digest(config),
        )
        manifest = assemble_manifest(project, target, build, chosen.artifact, runtime, chosen.verification,
                                     chosen.model, stage, [f.info(config) for f in fallbacks])  # fmt: skip
        writer.write_manifest(stage, manifest)
        verification = chosen.verification.model_dump(mode="json", include=RESULT_VERIFICATION)
        if store is not None:
            store(stage, chosen.variant.name, verification)
        writer.publish(stage, final)
    tsay(f"bundle {final} ({chosen.variant.name}, verification {chosen.verification.status})")
    return BundleResult(target.name, final, verification, variant=chosen.variant.name)


def _build_variants(project: Project, target: Target, options: Any, variants: list[Variant], stage: Path,
                    workdir: Path, say: Progress) -> tuple[Candidate, list[dict[str, Any]]]:  # fmt: skip
    """The variant to ship, built into ``stage``; under --optimize auto also every candidate's summary."""
    if len(variants) == 1:
        chosen = build_candidate(project, target, options, variants[0], stage, workdir, say)
        summaries: list[dict[str, Any]] = []
        if chosen.status == "failed" and repairable(chosen, target):
            repaired = _repaired(project, target, options, chosen, stage, workdir, say)
            if repaired is not None:
                summaries = [chosen.summary(None), repaired.summary(None)]
                shutil.rmtree(stage / layout.MODEL_DIR)
                os.rename(repaired.root / layout.MODEL_DIR, stage / layout.MODEL_DIR)
                shutil.rmtree(stage / layout.CANDIDATES_DIR)
                repaired.root, chosen = stage, repaired
        check_budget(project.config, [chosen], say, fixed=True)
        if chosen.status == "failed":
            raise VerificationFailed(failure_message(target, chosen, project.model.upgrade), hint=failure_hint(chosen))
        return chosen, summaries
    candidates = [
        try_candidate(project, target, options, v, stage / layout.CANDIDATES_DIR / v.name, workdir, say, i == 0)
        for i, v in enumerate(variants)
    ]
    for candidate in [c for c in candidates[1:] if repairable(c, target)]:  # the fp32 baseline has nothing to repair
        repaired = _repaired(project, target, options, candidate, stage, workdir, say)
        if repaired is not None:
            candidates.append(repaired)
    check_budget(project.config, candidates, say, fixed=False)
    chosen = choose_candidate(target, candidates, project.reference_inputs, say, project.model.upgrade)
    summaries = [c.summary(candidates[0].latency_ms) for c in candidates]  # before the folders go
    if not has_calibration(project.config):
        # Said, and recorded: a user reading the candidates learns what auto could not try, and why.
        say(f"int8-static not tried: {NO_CALIBRATION}")
        summaries.append({"name": "int8-static", "precision": "int8-static", "status": "not tried",
                          "reason": NO_CALIBRATION})  # fmt: skip
    os.rename(chosen.root / layout.MODEL_DIR, stage / layout.MODEL_DIR)
    shutil.rmtree(stage / layout.CANDIDATES_DIR)
    chosen.root = stage
    return chosen, summaries


def _replay(project: Project, target: Target, options: Any, policy: Policy, stage: Path, workdir: Path,
            say: Progress) -> tuple[Candidate, list[dict[str, Any]]]:  # fmt: skip
    """The policy's variant alone, after checking the policy still fits; its search record as the summaries."""
    check_fits(policy, project, target, options)
    variant = policy.variant()
    say(f"policy {policy.name}: variant {variant.name}, no search")
    chosen = build_candidate(project, target, options, variant, stage, workdir, say)
    check_budget(project.config, [chosen], say, fixed=True)
    if chosen.status == "failed":  # a policy never bypasses verification
        hint = "the policy's variant no longer passes here; compile without --policy to search again"
        raise VerificationFailed(failure_message(target, chosen, project.model.upgrade), hint=hint)
    return chosen, policy.candidates()


def _repaired(project: Project, target: Target, options: Any, failed: Candidate, stage: Path, workdir: Path,
              say: Progress) -> Candidate | None:  # fmt: skip
    """Precision repair of a variant that missed tolerance (gpuxc/build/repair.py); the ranking is
    recorded on the failed candidate either way."""
    repaired, ranking = repair(project, target, options, failed, stage / layout.CANDIDATES_DIR, workdir, say)
    failed.sensitivity = ranking_json(ranking)
    if repaired is not None:
        repaired.sensitivity = failed.sensitivity
        say(f"{repaired.variant.name}: repaired variant passed")
    else:
        say(f"{failed.variant.name}: no repaired variant passed within the budget")
    return repaired


def _check_target_names(config: GpuxConfig, names: list[str], known: dict[str, Any], from_command_line: bool) -> None:
    """Every requested target exists; one from build.targets is reported at its place in gpux.yml."""
    for index, name in enumerate(names):
        if name not in known:
            where = f"{config.where('build', 'targets', index)}: " if not from_command_line else ""
            listed = ", ".join(sorted(known))
            raise TargetUnavailable(
                f"{where}unknown target '{name}'{did_you_mean(name, known)}; known targets: {listed}"
            )


def _template_dirs(target: Target) -> tuple[Path, ...]:
    return (target.template_dir,) if target.template_dir else ()
