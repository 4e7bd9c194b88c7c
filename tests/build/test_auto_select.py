"""The --optimize auto selection rule, on candidates with measured latencies."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuxc.build.candidate import Candidate
from gpuxc.build.search import AUTO_MIN_GAIN, select_candidate
from gpuxc.targets import Variant


def cand(name: str, status: str, latency: float | None) -> Candidate:
    return Candidate(Variant(name, name), Path("."), status=status, latency_ms=latency)


def test_the_fastest_passing_candidate_that_beats_fp32_wins() -> None:
    chosen = select_candidate([cand("fp32", "passed", 10.0), cand("int8-dynamic", "passed", 7.0),
                               cand("int8-static", "passed", 4.0)])  # fmt: skip
    assert chosen is not None and chosen.variant.name == "int8-static"


def test_a_faster_candidate_outside_tolerance_is_never_kept() -> None:
    chosen = select_candidate([cand("fp32", "passed", 10.0), cand("int8-static", "failed", 2.0)])
    assert chosen is not None and chosen.variant.name == "fp32"


def test_a_candidate_slower_than_fp32_is_never_kept() -> None:
    chosen = select_candidate([cand("fp32", "passed", 10.0), cand("int8-dynamic", "passed", 11.0)])
    assert chosen is not None and chosen.variant.name == "fp32"


@pytest.mark.parametrize("gain", [0.0, AUTO_MIN_GAIN / 2])
def test_a_gain_within_timing_noise_keeps_fp32(gain: float) -> None:
    chosen = select_candidate([cand("fp32", "passed", 10.0), cand("int8-dynamic", "passed", 10.0 * (1 - gain))])
    assert chosen is not None and chosen.variant.name == "fp32"


def test_skipped_and_errored_candidates_are_not_eligible() -> None:
    chosen = select_candidate([cand("fp32", "passed", 10.0), cand("int8-dynamic", "skipped", None),
                               cand("int8-static", "error", None)])  # fmt: skip
    assert chosen is not None and chosen.variant.name == "fp32"


def test_over_budget_baseline_gives_way_to_the_fastest_that_fits() -> None:
    chosen = select_candidate([cand("fp32", "over-budget", 10.0), cand("int8-dynamic", "passed", 12.0),
                               cand("int8-static", "over-budget", 3.0)])  # fmt: skip
    assert chosen is not None and chosen.variant.name == "int8-dynamic"


def test_nothing_eligible_is_none() -> None:
    assert select_candidate([cand("fp32", "over-budget", 10.0), cand("int8-static", "failed", 3.0)]) is None
