"""One variant of a target's build: plan → passes → compile → verify → memory estimate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from gpuxc.build.layer_precision import precision_counts
from gpuxc.build.memory import MemoryEstimate
from gpuxc.build.memory import estimate as memory_estimate
from gpuxc.build.project import Project
from gpuxc.build.verify import verify_artifact
from gpuxc.bundle import layout
from gpuxc.bundle.manifest import Verification
from gpuxc.errors import CompileError, GpuxcError, first_line
from gpuxc.passes import PassContext, PassManager, PassRecord, PassSpec
from gpuxc.plugin import get_registry
from gpuxc.project.preprocessing import TextPreprocessing, tokenizer_path
from gpuxc.project.upgrade import ModelUpgrade
from gpuxc.targets import Artifact, CompileContext, Target, Variant

Progress = Callable[[str], None]

# Passes that change the numbers: a variant is "lossy" by them, and a failure names them.
LOSSY_PASSES = {"fp16", "quantize-dynamic", "quantize-static", "quantize-int4"}
# The parameter of each lossy pass that leaves named nodes in float (the precision repair's lever,
# gpuxc/build/repair.py), and the variant setting that names those nodes.
KEEP_PARAMS = {"quantize-static": "nodes_to_exclude", "quantize-dynamic": "nodes_to_exclude", "fp16": "node_block_list",
               "quantize-int4": "nodes_to_exclude"}
KEEP_SETTING = "keep_float"


def keep_float(specs: list[PassSpec], nodes: list[str]) -> list[PassSpec]:
    """``specs`` with ``nodes`` added to each lossy pass's keep-in-float parameter."""
    out = []
    for spec in specs:
        param = KEEP_PARAMS.get(spec.name)
        if param and nodes:
            kept = list(dict.fromkeys([*spec.params.get(param, []), *nodes]))
            spec = replace(spec, params={**spec.params, param: kept})
        out.append(spec)
    return out


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
    # Precision repair (gpuxc/build/repair.py): the ranking of a variant that missed tolerance.
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    repair_note: str | None = None  # what the repair tried, when nothing it built passed
    # Layer name -> precision as it runs ("int8", "bf16", "fp32"...): Target.layer_precisions.
    layer_precisions: dict[str, str] | None = None

    def summary(self, baseline_ms: float | None) -> dict[str, Any]:
        """What the manifest's ``build.candidates`` records of this candidate."""
        metrics = self.verification.outputs if self.verification else {}
        cosines = [m["cosine"] for m in metrics.values() if isinstance(m, dict) and "cosine" in m]
        max_abs = [m["max_abs"] for m in metrics.values() if isinstance(m, dict) and "max_abs" in m]
        size = None
        if self.artifact:
            size = sum(p.stat().st_size for p in (self.root / layout.MODEL_DIR).rglob("*") if p.is_file())
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
        } | self._repair_summary()

    def numerics_passed(self) -> bool:
        """Passed verification, or passed it on a stand-in runtime (a TensorRT graph on ONNX Runtime
        CPU: "unverified" on its own runtime, yet inside tolerance). A precision repair accepts
        either; a candidate that never ran (no runtime here) passed nothing."""
        if self.status == "passed":
            return True
        v = self.verification
        return self.status == "unverified" and v is not None and v.runtime is not None and not v.failures

    def _repair_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.layer_precisions:
            out["layer_precisions"] = precision_counts(self.layer_precisions)
        if KEEP_SETTING in self.variant.settings:
            out["kept_float"] = list(self.variant.settings[KEEP_SETTING])
        if self.sensitivity:
            out["sensitive_nodes"] = self.sensitivity
        if self.repair_note:
            out["repair"] = self.repair_note
        return out


def build_candidate(
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
    specs = keep_float(target.plan(config, project.model.signature, options, variant),
                       list(variant.settings.get(KEEP_SETTING, [])))  # fmt: skip
    say(f"{variant.name}: plan {', '.join(s.name for s in specs) or 'no passes'}")
    scratch = workdir / variant.name
    scratch.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    manager = PassManager(get_registry())
    model, records = run_passes(project, target, specs, scratch, manager, say=lambda m: say(f"{variant.name}: {m}"))
    candidate.model, candidate.records = model, records
    skipped = _skipped_precision_pass(records)
    if skipped is not None and search:
        # e.g. int8-dynamic on a CNN: nothing to quantize, so this would be the fp32 build again.
        # (A fixed build still ships it: the manifest records the pass as skipped and why.)
        candidate.status, candidate.reason = "skipped", skipped
        say(f"{variant.name}: skipped ({skipped})")
        return candidate
    say(f"{variant.name}: compile")
    cctx = CompileContext(config, project.model.signature, options, root, scratch, variant, dict(manager.artifacts),
                          preprocessing=project.preprocessing)  # fmt: skip
    try:
        candidate.artifact = target.compile(model, cctx)
    except GpuxcError:
        raise
    except Exception as exc:
        raise CompileError(f"target '{target.name}' failed: {type(exc).__name__}: {first_line(exc)}") from exc
    candidate.verification = verify_artifact(project, target, root, candidate.artifact, variant, say)
    candidate.status = candidate.verification.status
    candidate.reason = candidate.verification.reason
    if search or variant.settings.get(KEEP_SETTING):
        candidate.layer_precisions = _layer_precisions(target, model, root, candidate.artifact, say)
    candidate.memory = memory_estimate(model, project.activation_bytes, variant.precision)
    return candidate


def run_passes(project: Project, target: Target, specs: list[PassSpec], scratch: Path, manager: PassManager,
               say: Progress | None = None) -> tuple[onnx.ModelProto, list[PassRecord]]:  # fmt: skip
    """``specs`` run on a copy of the project's model, in ``scratch`` (passes never modify their input,
    but the project's model is shared by every candidate and target)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(project.model.proto)
    pre = project.preprocessing
    tokenizer = tokenizer_path(project.config) if isinstance(pre, TextPreprocessing) else None
    ctx = PassContext(workdir=scratch, target=target.name, model_dir=project.model.path.parent,
                      project_dir=project.config.project_dir, reference_shapes=project.reference_shapes,
                      preprocessing=pre, tokenizer=tokenizer)  # fmt: skip
    return manager.run(proto, specs, ctx, progress=say)


def try_candidate(
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
        return build_candidate(project, target, options, variant, root, workdir, say, search=True)
    except GpuxcError as exc:  # a pass, the target, or its runtime refusing the result
        if baseline:
            raise
        say(f"{variant.name}: failed ({exc})")
        return Candidate(variant, root, status="error", reason=str(exc))


def _layer_precisions(target: Target, model: onnx.ModelProto, root: Path, artifact: Artifact,
                      say: Progress) -> dict[str, str] | None:  # fmt: skip
    """The candidate summary's layer precisions; a summary, so a failure to read them is said, not fatal."""
    try:
        return target.layer_precisions(model, root, artifact)
    except Exception as exc:
        say(f"layer precisions not read: {type(exc).__name__}: {first_line(exc)}")
        return None


def _skipped_precision_pass(records: list[PassRecord]) -> str | None:
    for record in records:
        if record.name in LOSSY_PASSES and record.status == "skipped":
            return f"{record.name}: {record.reason}"
    return None


def failure_message(target: Target, candidate: Candidate, upgrade: ModelUpgrade | None = None) -> str:
    """The error of a candidate that failed verification: the first failure, the lossy passes, and
    the ops onnx.version_converter rewrote when the source was upgraded (the likely culprits)."""
    verification = candidate.verification
    assert verification is not None
    lossy = [r.name for r in candidate.records if r.name in LOSSY_PASSES and r.status == "applied"]
    by = f" after pass {', '.join(lossy)}" if lossy else ""
    more = f" (and {len(verification.failures) - 1} more)" if len(verification.failures) > 1 else ""
    suspects = upgrade.suspects() if upgrade is not None else ""
    converted = f"; {suspects}" if suspects else ""
    return (
        f"[{target.name}] {candidate.variant.name} output differs from the source model beyond tolerance{by}: "
        f"{verification.failures[0]}{more}{converted}"
    )


def failure_hint(candidate: Candidate) -> str:
    if candidate.variant.precision != "fp32":
        tried = f"{candidate.repair_note}; " if candidate.repair_note else ""
        return f"{tried}try build.optimize: auto (keeps the fastest variant inside tolerance) or a higher precision"
    return "loosen build.tolerance only if the difference is acceptable for your model"
