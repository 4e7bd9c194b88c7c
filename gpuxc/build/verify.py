"""Verification: an artifact's outputs against the source model's, sample by sample, under a tolerance.

Compile-time verification (:func:`verify_artifact`) and ``gpuxc verify --against``
(gpuxc/bundle/against.py) share the one sample loop, :func:`compare_samples`: the worst value
of each metric over all samples is kept, and any sample outside tolerance fails the whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuxc.bundle.compare import DEFAULT_TOLERANCE, compare, worst_of
from gpuxc.bundle.manifest import Verification
from gpuxc.errors import CompileError, GpuxcError, first_line
from gpuxc.project.config import GpuxConfig

if TYPE_CHECKING:
    import numpy as np

    from gpuxc.build.project import Project
    from gpuxc.project.upgrade import ModelUpgrade
    from gpuxc.targets import Target, Variant

Arrays = dict[str, "np.ndarray"]


def tolerance_for(config: GpuxConfig, precision: str | None = None, hint: str | None = None) -> dict[str, float]:
    """The gate for a build at ``precision`` (computed under the inference precision ``hint``, for
    targets whose runtime has one): that precision's defaults, then build.tolerance."""
    precision = precision or config.build.precision
    # int4-weights (weight-only) is judged like int8: elementwise error expected, overall agreement gated.
    key = "int8" if precision.startswith(("int8", "int4")) else "fp16" if precision == "fp16" else "fp32"
    if key == "fp16" and hint == "bf16":
        key = "bf16"
    base = dict(DEFAULT_TOLERANCE[key])
    base.update({k: v for k, v in config.build.tolerance.model_dump().items() if v is not None})
    return base


def compare_samples(
    pairs: Iterable[tuple[Arrays, Arrays]],
    tolerance: dict[str, float],
    class_outputs: set[str],
    label_from: int = 0,
) -> dict[str, Any]:
    """Judge (expected, actual) output pairs, one per sample, as one report: ``status``, the worst
    ``outputs`` metrics over all samples and every sample's ``failures``, those of samples from
    ``label_from`` on prefixed with "sample N: ". ``pairs`` may be lazy: each is made when judged."""
    worst: dict[str, Any] = {}
    failures: list[str] = []
    for index, (expected, actual) in enumerate(pairs):
        report = compare(expected, actual, tolerance, class_outputs)
        failures += [f if index < label_from else f"sample {index}: {f}" for f in report["failures"]]
        for name, metrics in report["outputs"].items():
            worst[name] = worst_of(worst.get(name), metrics)
    return {"status": "failed" if failures else "passed", "outputs": worst, "failures": failures}


def _execute(target: Target, root: Path, artifact: Any, feeds: dict[str, np.ndarray],
             upgrade: ModelUpgrade | None) -> dict[str, np.ndarray]:  # fmt: skip
    """The artifact on ``feeds``; a runtime that raises is a one-line error naming the runtime (and,
    for an upgraded source, the ops onnx.version_converter rewrote), not a traceback."""
    try:
        return target.execute(root, artifact, feeds)
    except Exception as exc:
        detail = exc.message if isinstance(exc, GpuxcError) else f"{type(exc).__name__}: {first_line(exc)}"
        suspects = upgrade.suspects() if upgrade is not None else ""
        converted = f" ({suspects})" if suspects else ""
        raise CompileError(f"target '{target.name}': the compiled model does not run on "
                           f"{target.verification_runtime()}: {detail}{converted}") from None  # fmt: skip


def verify_artifact(
    project: Project, target: Target, root: Path, artifact: Any, variant: Variant, say: Callable[[str], None]
) -> Verification:
    """Run ``artifact`` (in the bundle-shaped folder ``root``) on the reference input, and on more
    inputs for a lossy variant, and judge it against the source model by ``variant``'s tolerance."""
    tolerance = tolerance_for(project.config, variant.precision, variant.settings.get("hint"))
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
    upgrade = project.model.upgrade
    pairs = ((expected, _execute(target, root, artifact, feeds, upgrade)) for feeds, expected in samples)
    report = compare_samples(pairs, tolerance, class_outputs, label_from=1)
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
