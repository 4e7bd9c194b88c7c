"""Fallback variants (build.fallback, ``--fallback``): more targets' artifacts in one bundle.

After the primary variant is chosen, each fallback target is built and verified as a standalone
build of that target would be (auto search, precision repair and all), in its own staging root;
its model folder then moves to ``variants/<target>/`` of the bundle and its adapter is copied to
``runner/runtime_<target>.py``. The runner tries the variants in the manifest's order.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuxc.build.assemble import variant_info
from gpuxc.build.candidate import Candidate
from gpuxc.build.options import target_options
from gpuxc.build.project import Project
from gpuxc.build.report import print_verification
from gpuxc.build.search import tune_runtime
from gpuxc.bundle import layout
from gpuxc.bundle.manifest import VariantInfo
from gpuxc.bundle.runner_source import variant_module
from gpuxc.errors import CompileError, ConfigError, TargetUnavailable, VerificationFailed, did_you_mean
from gpuxc.plugin import get_registry
from gpuxc.project.config import GpuxConfig
from gpuxc.targets import Artifact, RuntimeSpec, Target, Variant

Progress = Callable[[str], None]
# pipeline._build_variants: (project, target, options, variants, stage, workdir, say) -> (chosen, summaries)
BuildVariants = Callable[[Project, Target, Any, list[Variant], Path, Path, Progress],
                         tuple[Candidate, list[dict[str, Any]]]]  # fmt: skip


@dataclass
class Fallback:
    """One fallback variant built, verified and moved into the bundle under ``variants/<target>/``."""

    target: Target
    chosen: Candidate  # its artifact's entry and files point under variants/<target>/
    artifact: Artifact
    runtime: RuntimeSpec
    note: str | None  # set when it was built at fp32 because the target does not offer build.precision

    def info(self, config: GpuxConfig) -> VariantInfo:
        assert self.chosen.verification is not None
        return variant_info(config, self.target.name, variant_module(self.target.name), self.chosen.variant,
                            self.artifact, self.runtime, self.chosen.verification, self.note)  # fmt: skip


def check_fallback_targets(config: GpuxConfig, primaries: list[str], known: dict[str, Any],
                           from_command_line: bool) -> None:  # fmt: skip
    """Every fallback is a known target other than the bundle's primary, and web has none (it serves
    a page). gpux.yml's own checks (repeats, web as a fallback) ran when it was loaded."""
    fallbacks = config.build.fallback
    if not fallbacks:
        return

    def where(index: int) -> str:
        return "--fallback" if from_command_line else config.where("build", "fallback", index)

    for index, name in enumerate(fallbacks):
        if name not in known:
            listed = ", ".join(sorted(known))
            raise TargetUnavailable(f"{where(index)}: unknown fallback target '{name}'{did_you_mean(name, known)}; "
                                    f"known targets: {listed}")  # fmt: skip
        if variant_module(name) in [variant_module(other) for other in fallbacks[:index]]:
            raise ConfigError(f"{where(index)}: fallback '{name}' would share its runner module with an earlier "
                              f"fallback ({variant_module(name)}); rename one of the two targets")  # fmt: skip
        if name in primaries:
            raise ConfigError(f"{where(index)}: fallback '{name}' is also the bundle's primary target; a fallback "
                              "must be another target")  # fmt: skip
    if "web" in primaries:
        raise ConfigError(f"{where(0)}: target 'web' cannot have fallbacks: a web bundle serves a page, not one "
                          "variant among others")  # fmt: skip


def build_fallbacks(project: Project, stage: Path, workdir: Path, say: Progress, build_variants: BuildVariants,
                    reproducible: bool) -> list[Fallback]:  # fmt: skip
    """Each of build.fallback built, verified and moved into ``stage``, in order. A fallback whose
    build fails verification fails the compile (an unverified one, with no runtime here, is recorded)."""
    registry = get_registry()
    out = []
    for name in project.config.build.fallback:
        target = registry.targets[name]()

        def fsay(message: str, name: str = name) -> None:
            say(f"fallback {name}: {message}")

        out.append(_build_one(project, target, stage, workdir / f"fallback-{name}", fsay, build_variants, reproducible))
    return out


def _build_one(project: Project, target: Target, stage: Path, workdir: Path, say: Progress,
               build_variants: BuildVariants, reproducible: bool) -> Fallback:  # fmt: skip
    availability = target.check_available()
    if not availability.available:
        hint = availability.install_hint or target.install_hint
        raise TargetUnavailable(f"fallback target '{target.name}' is not available here: {availability.reason}",
                                hint=hint)  # fmt: skip
    options = target_options(project.config, target)
    project, variants, note = _variants(project, target, options)
    if note:
        say(note)
    root = workdir / "stage"  # bundle-shaped, like the primary's staging folder
    root.mkdir(parents=True)
    try:
        chosen, _ = build_variants(project, target, options, variants, root, workdir / "work", say)
    except VerificationFailed as exc:
        raise VerificationFailed(f"fallback {exc.message}", hint=exc.hint) from None
    config = project.config
    if (config.build.optimize == "auto" or config.build.precision == "auto") and not reproducible:  # as standalone
        tune_runtime(target, chosen, project.reference_inputs, say)
    assert chosen.artifact is not None and chosen.verification is not None
    folder = layout.variant_dir(target.name)
    (stage / layout.VARIANTS_DIR).mkdir(exist_ok=True)
    os.rename(root / layout.MODEL_DIR, stage / folder)
    _move_other_files(target, chosen.artifact, root, stage)
    artifact = dataclasses.replace(chosen.artifact, entry=_moved(chosen.artifact.entry, folder),
                                   files=[_moved(f, folder) for f in chosen.artifact.files])  # fmt: skip
    print_verification(chosen.verification, say)
    say(f"{chosen.variant.name} in {folder}/, verification {chosen.verification.status}")
    return Fallback(target, chosen, artifact, target.runtime(options, artifact), note)


def _variants(project: Project, target: Target, options: Any) -> tuple[Project, list[Variant], str | None]:
    """The fallback's variants at build.precision, or at fp32 (with a note saying so) when the target
    does not offer that precision (its ``variants`` refuses it with a ConfigError)."""
    config = project.config
    auto = config.build.optimize == "auto" or config.build.precision == "auto"
    try:
        return project, target.variants(config, options, auto), None
    except ConfigError:  # its message names gpux.yml's path: not for the manifest
        fp32 = config.model_copy(update={"build": config.build.model_copy(update={"precision": "fp32"})})
        note = f"built at fp32: the {target.name} target does not offer {config.build.precision}"
        return dataclasses.replace(project, config=fp32), target.variants(fp32, options, auto), note


def _move_other_files(target: Target, artifact: Artifact, root: Path, stage: Path) -> None:
    """Files the target wrote beside model/ (tensorrt's runner/trt_builder.py, which its adapter
    imports) go to the same place in the bundle; one the bundle already has is a conflict."""
    for rel in artifact.files:
        if rel.startswith(layout.MODEL_DIR + "/") or not (root / rel).is_file():
            continue
        if (stage / rel).exists():
            raise CompileError(f"fallback target '{target.name}' writes {rel}, which the bundle already has")
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        os.rename(root / rel, stage / rel)


def _moved(path: str, folder: str) -> str:
    """An artifact path under ``model/`` as it is once the model folder is ``folder``."""
    prefix = layout.MODEL_DIR + "/"
    return folder + "/" + path[len(prefix):] if path.startswith(prefix) else path
