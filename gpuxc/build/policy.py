"""Policy as code: one target's build decisions as a YAML file that ``gpuxc compile --policy`` replays.

A policy holds the shipped variant (name, precision, settings: the precision repair's kept nodes,
a backend's hint, tuned runtime settings), the target options and passes it was built with, the
sha256 of the model and the calibration data it was built from, the tolerance, and the record of
the search that chose it. Exported from a bundle's manifest (``gpuxc policy export``); a replay
builds that one variant, with no candidate search, repair or timing, still verified, and writes
the search record back as it was, so the same inputs give the same bundle (docs/policy.md).

Reading and writing a policy imports nothing heavy: ``compile --policy`` loads it before the warm
rebuild decides whether onnx is needed at all. :func:`check_fits` (the policy against the loaded
project) imports the build modules when it runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuxc import __version__
from gpuxc.errors import BundleError, ConfigError, did_you_mean
from gpuxc.project.config import PRECISIONS
from gpuxc.project.config_errors import kind_of, validation_error
from gpuxc.project.yamlsource import SourceMap, load_yaml

if TYPE_CHECKING:
    from gpuxc.build.project import Project
    from gpuxc.bundle.manifest import Manifest
    from gpuxc.targets import Target, Variant

POLICY_VERSION = 1
# Variant settings whose value is a list of the model's node names (checked on replay); the
# first is gpuxc.build.candidate.KEEP_SETTING, spelled here because that module imports onnx.
NODE_SETTINGS = ("keep_float",)
# Settings the build adds to a target's own variants: the repair's nodes, auto's tuned runtime settings.
BUILD_SETTINGS = (*NODE_SETTINGS, "runtime")
HEADER = (
    "# gpuxc policy: the build decisions of one bundle. Replay them (no search, no timing, still verified):\n"
    "#   gpuxc compile PROJECT --policy THIS_FILE\n"
    "# Fields: docs/policy.md\n"
)

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Optimize = Literal["fixed", "auto"]


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PolicyModel(_P):
    file: str  # the source model's file name, as the bundle recorded it
    sha256: Sha256


class PolicyBuild(_P):
    """gpux.yml's build.precision and build.optimize as the build that chose the variant had them."""

    precision: Literal[PRECISIONS]  # type: ignore[valid-type]
    optimize: Optimize


class PolicyVariant(_P):
    name: Annotated[str, Field(min_length=1)]
    precision: str
    settings: dict[str, Any] = Field(default_factory=dict)


class PolicyPass(_P):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PolicySearch(_P):
    """How the variant was chosen: written into the replayed manifest's build.optimize/candidates."""

    optimize: Optimize = "fixed"
    candidates: list[dict[str, Any]] = Field(default_factory=list)


class PolicyDocument(_P):
    policy: Literal[1]
    gpuxc_version: str  # that wrote the policy
    target: str
    model: PolicyModel
    calibration_sha256: Sha256 | None = None
    tolerance: dict[str, Any]
    build: PolicyBuild
    variant: PolicyVariant
    target_options: dict[str, Any] = Field(default_factory=dict)
    passes: list[PolicyPass]  # what the replay must plan: a check, never a plan of its own
    search: PolicySearch = Field(default_factory=PolicySearch)


@dataclass
class Policy:
    """A loaded policy file: the document and where each of its values is in the file."""

    document: PolicyDocument
    source: SourceMap

    @property
    def name(self) -> str:
        return self.source.file

    @property
    def target(self) -> str:
        return self.document.target

    def where(self, *path: str | int, key: bool = False) -> str:
        return self.source.where(path, key=key)

    @property
    def digest(self) -> str:
        """sha256 of the document as canonical JSON: part of the build cache key (comments don't count)."""
        text = json.dumps(self.document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def variant(self) -> Variant:
        from gpuxc.targets import Variant

        v = self.document.variant
        return Variant(v.name, v.precision, copy.deepcopy(v.settings))

    def candidates(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.document.search.candidates)

    def overrides(self, precision: str | None, optimize: str | None) -> tuple[str, str]:
        """build.precision and build.optimize for the replay: the policy's; the command line may not set them."""
        build = self.document.build
        if precision is not None or optimize is not None:
            raise ConfigError(f"{self.where('build')}: the policy sets precision and optimize ({build.precision}, "
                              f"{build.optimize}); drop --precision/--optimize")  # fmt: skip
        return build.precision, build.optimize

    def select_targets(self, requested: list[str] | None) -> list[str]:
        """The policy's target, which ``-t`` may name but not change (one policy per target)."""
        for name in requested or []:
            if name != self.target:
                raise ConfigError(f"{self.where('target')}: the policy is for target '{self.target}', not '{name}' "
                                  "(one policy per target: export one from each bundle)")  # fmt: skip
        return [self.target]

    def check_target_known(self, known: dict[str, Any]) -> None:
        if self.target not in known:
            listed = ", ".join(sorted(known))
            raise ConfigError(f"{self.where('target')}: target '{self.target}' of the policy is not a known target"
                              f"{did_you_mean(self.target, known)}; known targets: {listed}")  # fmt: skip


# -- reading and writing ------------------------------------------------------------------------


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file; every error is a ConfigError naming file:line:column."""
    data, smap = load_yaml(path, kind=("a policy file (gpuxc policy export BUNDLE)",
                                       "write one with gpuxc policy export BUNDLE"))  # fmt: skip
    return parse_policy(data, smap)


def parse_policy(data: Any, smap: SourceMap) -> Policy:
    if not isinstance(data, dict):
        raise ConfigError(f"{smap.where(())}: expected a mapping at the top level, got {kind_of(data)}")
    if "policy" not in data:
        raise ConfigError(f"{smap.where(())}: not a gpuxc policy (no 'policy: {POLICY_VERSION}' key)")
    if data["policy"] != POLICY_VERSION or isinstance(data["policy"], bool):
        raise ConfigError(f"{smap.where(('policy',))}: policy format {data['policy']!r}; "
                          f"this gpuxc reads {POLICY_VERSION}")  # fmt: skip
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, smap, PolicyDocument) from None
    return Policy(document, smap)


def policy_from_manifest(manifest: Manifest) -> dict[str, Any]:
    """The policy of a bundle, as plain data (validated: what is exported always loads)."""
    build = manifest.build
    configured = manifest.config.get("build", {})
    calibration = configured.get("calibration") or {}
    missing = "variant settings" if "variant_settings" not in build.model_fields_set else None
    if calibration.get("data") is not None and build.calibration_sha256 is None:
        missing = "calibration digest"
    if missing:  # a bundle from before policies: what it would replay is not all written down
        raise BundleError(f"bundle '{manifest.name}' records no {missing} (made by gpuxc "
                          f"{manifest.gpuxc_version}): rebuild it with this gpuxc to export its policy")  # fmt: skip
    data = {
        "policy": POLICY_VERSION,
        "gpuxc_version": __version__,
        "target": manifest.target,
        "model": {"file": manifest.source.file, "sha256": manifest.source.sha256},
        "calibration_sha256": build.calibration_sha256,
        "tolerance": configured.get("tolerance", {}),
        "build": {"precision": configured.get("precision"), "optimize": configured.get("optimize")},
        "variant": {"name": build.variant, "precision": build.precision, "settings": build.variant_settings},
        "target_options": build.target_options,
        "passes": [{"name": p.name, "params": p.params} for p in build.passes],
        "search": {"optimize": build.optimize, "candidates": build.candidates},
    }
    try:
        PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"bundle '{manifest.name}': its manifest gives no valid policy "
                          f"({exc.errors(include_url=False)[0]['msg']})") from None  # fmt: skip
    return data


def export_policy(bundle: Path) -> str:
    """The policy file's text for the bundle at ``bundle``."""
    from gpuxc.bundle.manifest import read_manifest

    return dump_policy(policy_from_manifest(read_manifest(bundle)))


def dump_policy(data: dict[str, Any]) -> str:
    # safe_dump writes floats with repr, so every number comes back exactly as the manifest had it.
    return HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


# -- the policy against the project -------------------------------------------------------------


def check_fits(policy: Policy, project: Project, target: Target, options: Any) -> None:
    """The policy still describes a build of this project: the variant is one the target builds,
    its nodes are in the model, the model, calibration data, tolerance and target options are the
    ones it was exported with, and the target plans the passes it recorded. ConfigError otherwise."""
    _check_variant(policy, project, target, options)
    _check_nodes(policy, project, target, options)
    _check_sources(policy, project, options)
    _check_plan(policy, project, target, options)


def _check_variant(policy: Policy, project: Project, target: Target, options: Any) -> None:
    v = policy.document.variant
    known = {x.name: x for auto in (False, True) for x in target.variants(project.config, options, auto)}
    base = v.name.split("+", 1)[0]  # "int8-static+keep1": the precision repair's variant of int8-static
    if base not in known:
        raise ConfigError(f"{policy.where('variant', 'name')}: variant '{v.name}' is not one target '{target.name}' "
                          f"builds here (it builds: {', '.join(known)})")  # fmt: skip
    precisions = [p for p in PRECISIONS if p != "auto"]
    if v.precision not in precisions:
        raise ConfigError(f"{policy.where('variant', 'precision')}: unknown precision '{v.precision}'"
                          f"{did_you_mean(v.precision, precisions)}; known: {', '.join(precisions)}")  # fmt: skip
    if v.precision != known[base].precision:
        raise ConfigError(f"{policy.where('variant', 'precision')}: precision '{v.precision}' is not variant "
                          f"'{base}''s ({known[base].precision})")  # fmt: skip
    allowed = {k for x in known.values() for k in x.settings} | set(BUILD_SETTINGS)
    for key, value in v.settings.items():
        if key not in allowed:
            raise ConfigError(f"{policy.where('variant', 'settings', key, key=True)}: unknown variant setting "
                              f"'{key}'{did_you_mean(key, allowed)}; target '{target.name}' knows: "
                              f"{', '.join(sorted(allowed))}")  # fmt: skip
        expected = known[base].settings.get(key, value)
        if key not in BUILD_SETTINGS and value != expected:
            raise ConfigError(f"{policy.where('variant', 'settings', key)}: variant.settings.{key} is {value!r}, "
                              f"but variant '{base}' of target '{target.name}' has {expected!r}")  # fmt: skip


def _check_nodes(policy: Policy, project: Project, target: Target, options: Any) -> None:
    settings = policy.document.variant.settings
    names = {n.name for n in project.model.proto.graph.node}
    lossy_input: set[str] | None = None
    for key in NODE_SETTINGS:
        nodes = settings.get(key, [])
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise ConfigError(f"{policy.where('variant', 'settings', key)}: variant.settings.{key} must be a list "
                              "of node names")  # fmt: skip
        for index, node in enumerate(nodes):
            if node in names:
                continue
            if lossy_input is None:  # a node an earlier pass made (a fusion's): named in the lossy pass's input
                lossy_input = _lossy_input_nodes(policy, project, target, options)
                names |= lossy_input
            if node not in names:
                changed = _model_changed(policy, project)
                again = f"; {changed}" if changed else ""
                raise ConfigError(f"{policy.where('variant', 'settings', key, index)}: node '{node}' in "
                                  f"variant.settings.{key} is not in the model{again}")  # fmt: skip


def _lossy_input_nodes(policy: Policy, project: Project, target: Target, options: Any) -> set[str]:
    """Node names of the model the first lossy pass receives (the plan replayed up to it, as the repair ranks)."""
    import tempfile

    from gpuxc.build.candidate import LOSSY_PASSES, run_passes
    from gpuxc.passes import PassManager
    from gpuxc.plugin import get_registry

    before = []
    for spec in target.plan(project.config, project.model.signature, options, policy.variant()):
        if spec.name in LOSSY_PASSES:
            break
        before.append(spec)
    with tempfile.TemporaryDirectory(prefix="gpuxc-policy-") as scratch:
        model, _ = run_passes(project, target, before, Path(scratch), PassManager(get_registry()))
    return {n.name for n in model.graph.node}


def _model_changed(policy: Policy, project: Project) -> str | None:
    recorded, now = policy.document.model.sha256, project.model.signature.sha256
    if recorded == now:
        return None
    return (f"{project.model.path.name} changed since the policy was exported (sha256 {now}, the policy has "
            f"{recorded}): re-export the policy from a bundle built from this model")  # fmt: skip


def _check_sources(policy: Policy, project: Project, options: Any) -> None:
    from gpuxc.cache.key import calibration_digest

    doc, config = policy.document, project.config
    changed = _model_changed(policy, project)
    if changed:
        raise ConfigError(f"{policy.where('model', 'sha256')}: {changed}")
    digest = calibration_digest(config)
    if digest != doc.calibration_sha256:
        now, then = digest or "no calibration data", doc.calibration_sha256 or "no calibration data"
        raise ConfigError(f"{policy.where('calibration_sha256')}: the calibration data changed since the policy "
                          f"was exported (now {now}, the policy has {then}): re-export the policy")  # fmt: skip
    tolerance = config.canonical()["build"]["tolerance"]
    if tolerance != doc.tolerance:
        raise ConfigError(f"{policy.where('tolerance')}: gpux.yml's build.tolerance is {tolerance}, the policy was "
                          f"verified under {doc.tolerance}: re-export the policy")  # fmt: skip
    target_options = options.model_dump(mode="json")
    if target_options != doc.target_options:
        raise ConfigError(f"{policy.where('target_options')}: gpux.yml's build.options.{doc.target} gives "
                          f"{target_options}, the policy has {doc.target_options}: re-export the policy")  # fmt: skip


def _check_plan(policy: Policy, project: Project, target: Target, options: Any) -> None:
    """The passes the target plans for the variant are the ones the policy recorded, parameters included."""
    from gpuxc.build.candidate import KEEP_SETTING, keep_float
    from gpuxc.passes import PassManager
    from gpuxc.plugin import get_registry

    variant = policy.variant()
    specs = keep_float(target.plan(project.config, project.model.signature, options, variant),
                       list(variant.settings.get(KEEP_SETTING, [])))  # fmt: skip
    manager = PassManager(get_registry())
    planned = [(s.name, manager.instantiate(s).config.model_dump(mode="json")) for s in specs]
    recorded = [(p.name, p.params) for p in policy.document.passes]
    made_by = f"made by gpuxc {policy.document.gpuxc_version}; re-export the policy"
    for index, ((name, params), (was, was_params)) in enumerate(zip(planned, recorded, strict=False)):
        if name != was:
            raise ConfigError(f"{policy.where('passes', index, 'name')}: the target now plans pass '{name}' here, "
                              f"the policy recorded '{was}' ({made_by})")  # fmt: skip
        for key in sorted(set(params) | set(was_params)):
            if params.get(key) != was_params.get(key):
                raise ConfigError(f"{policy.where('passes', index, 'params')}: pass '{name}' is planned with "
                                  f"{key}={params.get(key)!r}, the policy recorded {was_params.get(key)!r} "
                                  f"({made_by})")  # fmt: skip
    if len(planned) != len(recorded):
        now, then = [n for n, _ in planned], [n for n, _ in recorded]
        raise ConfigError(f"{policy.where('passes')}: the target now plans {now}, the policy recorded {then} "
                          f"({made_by})")  # fmt: skip
