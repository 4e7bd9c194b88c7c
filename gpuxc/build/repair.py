"""Precision repair: a lossy variant that misses tolerance is rebuilt with its most sensitive
nodes kept in float, the fewest that make it pass.

The ranking is gpuxc/build/sensitivity.py's, measured between the model the lossy pass received
and the one it produced, on the reference input and the extra verification inputs. The search
keeps back the top 1, 2, 4, 8... nodes (doubling: few builds, and the answer is at most twice the
smallest that passes), each candidate built and verified like any other, at most MAX_BUILDS
builds and MAX_SECONDS. Each backend's own mechanism does the keeping: ``nodes_to_exclude`` for
ONNX Runtime's quantizers, ``node_block_list`` for the fp16 converter (KEEP_PARAMS), so the
repaired variant's manifest lists the nodes among its pass parameters and replays as it is.

A target whose lossy variants are lossy by its own compiler (OpenVINO's bf16 hint, NNCF int8) says
so with ``Target.keeps_float``: its ``compile`` reads the kept nodes from the variant's settings,
and ``Target.rank_sensitivity`` ranks on its own runtime (gpuxc_openvino/sensitivity.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuxc.build.candidate import KEEP_PARAMS, KEEP_SETTING, LOSSY_PASSES, Candidate, run_passes, try_candidate
from gpuxc.build.sensitivity import RECORDED, NodeSensitivity, rank_nodes
from gpuxc.errors import GpuxcError, first_line
from gpuxc.passes import PassManager
from gpuxc.plugin import get_registry

if TYPE_CHECKING:
    from gpuxc.build.project import Project
    from gpuxc.targets import Target, Variant

Progress = Callable[[str], None]

MAX_BUILDS = 6  # keep 1, 2, 4, ... 32 nodes
MAX_SECONDS = 600.0


def repairable(candidate: Candidate, target: Target | None = None) -> bool:
    """A variant that failed verification after one of the lossy passes gpuxc knows how to hold back,
    or one whose target keeps named nodes in float itself."""
    if candidate.status != "failed":
        return False
    applied = {r.name for r in candidate.records if r.status == "applied"}
    return bool(applied & set(KEEP_PARAMS)) or (target is not None and target.keeps_float(candidate.variant))


def repair(project: Project, target: Target, options: Any, failed: Candidate, root: Path, workdir: Path,
           say: Progress) -> tuple[Candidate | None, list[NodeSensitivity]]:  # fmt: skip
    """The repaired variant that passed (None if none did within the budget), and the ranking."""
    started = time.monotonic()
    variant = failed.variant
    try:
        ranking = _ranking(project, target, options, failed, workdir)
    except GpuxcError as exc:
        say(f"{variant.name}: no sensitivity ranking ({exc.message})")
        return None, []
    except Exception as exc:  # ONNX Runtime refusing an intermediate output, say: no repair, not a crash
        say(f"{variant.name}: no sensitivity ranking ({type(exc).__name__}: {first_line(exc)})")
        return None, []
    top = ", ".join(f"{s.node} ({s.op_type}, {s.contribution:.3g})" for s in ranking[:5])
    say(f"{variant.name}: most sensitive nodes: {top or 'none found'}")
    count, builds, kept, out_of_time = 1, 0, [], False
    while ranking and builds < MAX_BUILDS:
        if builds and time.monotonic() - started >= MAX_SECONDS:  # the first build always runs
            out_of_time = True
            break
        kept = [s.node for s in ranking[:count]]
        repaired = _variant(variant, kept)
        say(f"{repaired.name}: keeping {len(kept)} node(s) in float")
        builds += 1
        # As a search candidate: a quantizer refusing the exclusion list is an "error", and a lossy
        # pass left with nothing to lower is "skipped" (never an fp32 model under an int8 name).
        candidate = try_candidate(project, target, options, repaired, root / repaired.name, workdir, say, False)
        if candidate.numerics_passed():  # on a stand-in (tensorrt), "unverified" yet inside tolerance
            return candidate, ranking
        if candidate.status in ("skipped", "error"):
            break
        if count >= len(ranking):
            break
        count = min(count * 2, len(ranking))
    if kept:
        failed.repair_note = (f"keeping up to the {len(kept)} most sensitive of {len(ranking)} ranked nodes in float "
                              f"({builds} build(s)) did not pass either")  # fmt: skip
        if out_of_time:
            # Auto still ships the best variant that passed; the record says the search was cut short.
            failed.repair_note += f"; the repair's time budget ({MAX_SECONDS:g} s) ran out"
            say(f"{variant.name}: repair stopped: its time budget ({MAX_SECONDS:g} s) ran out after {builds} build(s)")
    return None, ranking


def ranking_json(ranking: list[NodeSensitivity]) -> list[dict[str, object]]:
    return [s.to_json() for s in ranking[:RECORDED]]


def _variant(variant: Variant, kept: list[str]) -> Variant:
    from gpuxc.targets import Variant as VariantClass

    settings = {**variant.settings, KEEP_SETTING: kept}
    return VariantClass(f"{variant.name}+keep{len(kept)}", variant.precision, settings)


def _ranking(project: Project, target: Target, options: Any, failed: Candidate, workdir: Path) -> list[NodeSensitivity]:
    """The target's own ranking, else the sensitivity between the lossy pass's input (the plan
    replayed up to it) and its output."""
    assert failed.model is not None
    feeds = [project.reference_inputs, *(f for f, _ in project.extra_references)]
    if failed.artifact is not None:
        own = target.rank_sensitivity(failed.model, failed.root, failed.artifact, feeds)
        if own is not None:
            return own
    specs = target.plan(project.config, project.model.signature, options, failed.variant)
    before = []
    for spec in specs:
        if spec.name in LOSSY_PASSES:
            break
        before.append(spec)
    scratch = workdir / f"{failed.variant.name}-sensitivity"
    scratch.mkdir(parents=True, exist_ok=True)
    reference, _ = run_passes(project, target, before, scratch, PassManager(get_registry()))
    return rank_nodes(reference, failed.model, feeds)
