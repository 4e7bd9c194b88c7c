"""``--optimize auto``: time the candidates that passed on this host and keep the fastest worth it.

Timing is interleaved rounds, each a median over enough runs to fill ~AUTO_ROUND_SECONDS, so drift
on the host hits every candidate alike, through the bundle's own runtime adapter (``Target.timer``):
what is measured is what the shipped runner delivers. :func:`select_candidate` is the rule, on
measured candidates; :func:`tune_runtime` then tries the target's runtime settings on the chosen one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from gpuxc.build.candidate import Candidate, failure_hint, failure_message
from gpuxc.build.report import candidates_table
from gpuxc.errors import VerificationFailed, first_line
from gpuxc.project.upgrade import ModelUpgrade
from gpuxc.targets import Target
from gpuxc.targets.timing import RUNTIME_SETTINGS

Progress = Callable[[str], None]

AUTO_ROUNDS = 5
AUTO_ROUND_SECONDS = 0.2
AUTO_MAX_RUNS = 100
# A candidate must beat fp32 by this much to be kept: a smaller gain is timing noise.
AUTO_MIN_GAIN = 0.05


def choose_candidate(target: Target, candidates: list[Candidate], feeds: dict[str, np.ndarray],
                     say: Progress, upgrade: ModelUpgrade | None = None) -> Candidate:  # fmt: skip
    """Time the candidates that passed; keep the fastest that beats fp32 by AUTO_MIN_GAIN."""
    baseline = candidates[0]
    if baseline.status == "failed":
        raise VerificationFailed(failure_message(target, baseline, upgrade), hint=failure_hint(baseline))
    timed = [c for c in candidates if c.status == "passed" and c.artifact is not None]
    runners = {}
    for c in timed:
        fn = target.timer(c.root, c.artifact)  # type: ignore[arg-type]
        if fn is not None:
            runners[c.variant.name] = (c, fn)
    if runners:
        time_candidates(runners, feeds, say)
    say("candidates:")
    for line in candidates_table([c.summary(baseline.latency_ms) for c in candidates]):
        say(line)
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


def time_candidates(runners: dict[str, tuple[Candidate, Any]], feeds: dict[str, np.ndarray], say: Progress) -> None:
    """Set each candidate's ``latency_ms``: the median of AUTO_ROUNDS interleaved round medians."""
    say(f"timing {len(runners)} candidate(s) on this host")
    latency = interleaved_ms({name: fn for name, (_c, fn) in runners.items()}, feeds)
    for name, (c, _fn) in runners.items():
        c.latency_ms = latency[name]


Timer = Callable[[dict[str, np.ndarray]], Any]


def interleaved_ms(fns: dict[str, Timer], feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Milliseconds per run of each function: the median of AUTO_ROUNDS interleaved round medians."""
    runs: dict[str, int] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        for _ in range(3):  # warm-up: first runs allocate and tune
            fn(feeds)
        per_run = max((time.perf_counter() - start) / 3, 1e-6)
        runs[name] = int(min(AUTO_MAX_RUNS, max(3, AUTO_ROUND_SECONDS / per_run)))
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(AUTO_ROUNDS):  # interleaved, so drift on the host hits every candidate alike
        for name, fn in fns.items():
            samples = []
            for _ in range(runs[name]):
                start = time.perf_counter()
                fn(feeds)
                samples.append(time.perf_counter() - start)
            rounds[name].append(statistics.median(samples) * 1000.0)
    return {name: statistics.median(values) for name, values in rounds.items()}


def tune_runtime(target: Target, chosen: Candidate, feeds: dict[str, np.ndarray], say: Progress) -> None:
    """Try the target's runtime settings on the chosen artifact; keep the fastest that beats the
    settings as built by more than AUTO_MIN_GAIN (else those). The choice goes into the artifact's
    settings (the manifest's ``artifact.settings``, applied by the runner) and into
    ``variant.settings["runtime"]``, so replaying the variant rebuilds the same artifact. A variant
    that already carries runtime settings (a replayed policy) is not tuned again."""
    artifact = chosen.artifact
    if artifact is None or chosen.status != "passed" or RUNTIME_SETTINGS in chosen.variant.settings:
        return
    trials = target.tuning_candidates(artifact)
    default = target.timer(chosen.root, artifact) if trials else None
    if default is None:
        return
    fns = {"as built": default}
    for trial in trials:
        try:  # a setting this runtime refuses is a trial lost, not a failed build
            fn = target.timer(chosen.root, replace(artifact, settings={**artifact.settings, **trial}))
            if fn is not None:
                fn(feeds)
                fns[_label(trial)] = fn
        except Exception as exc:
            say(f"runtime settings {_label(trial)} not tried: {first_line(exc)}")
    say(f"tuning runtime settings: {', '.join(fns)}")
    latency = interleaved_ms(fns, feeds)
    best = min((name for name in latency if name != "as built"), key=latency.__getitem__, default=None)
    if best is None:
        return
    tuned: dict[str, Any] = {}
    if latency[best] < latency["as built"] * (1 - AUTO_MIN_GAIN):
        tuned = next(t for t in trials if _label(t) == best)
        say(f"runtime settings {best}: {latency['as built']:.3f} -> {latency[best]:.3f} ms")
    else:
        say(f"runtime settings as built ({latency['as built']:.3f} ms; {best}: {latency[best]:.3f} ms)")
    artifact.settings.update(tuned)
    chosen.variant = replace(chosen.variant, settings={**chosen.variant.settings, RUNTIME_SETTINGS: tuned})


def _label(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())
