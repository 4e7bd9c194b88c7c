"""``--optimize auto``: time the candidates that passed on this host and keep the fastest worth it.

Timing is interleaved rounds, each a median over enough runs to fill ~AUTO_ROUND_SECONDS, so drift
on the host hits every candidate alike. :func:`select_candidate` is the rule, on measured candidates.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gpuxc.build.candidate import Candidate, failure_hint, failure_message
from gpuxc.build.report import candidates_table
from gpuxc.errors import VerificationFailed
from gpuxc.project.upgrade import ModelUpgrade
from gpuxc.targets import Target

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
