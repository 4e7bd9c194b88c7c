"""compare_samples: the one sample loop of compile-time verification and `verify --against`."""

from __future__ import annotations

import numpy as np

from gpuxc.build.verify import compare_samples
from gpuxc.bundle.compare import DEFAULT_TOLERANCE

TOL = DEFAULT_TOLERANCE["fp32"]


def pair(shift: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    expected = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    return {"y": expected}, {"y": expected + np.float32(shift)}


def test_the_worst_metric_over_samples_is_kept() -> None:
    report = compare_samples([pair(0.0), pair(1e-6), pair(0.0)], TOL, set())
    assert report["status"] == "passed" and report["failures"] == []
    assert report["outputs"]["y"]["max_abs"] > 0


def test_failures_are_labelled_from_the_sample_asked() -> None:
    bad = [pair(0.0), pair(1.0)]
    assert compare_samples(bad, TOL, set())["failures"][0].startswith("sample 1: ")
    first_bad = [pair(1.0)]
    assert compare_samples(first_bad, TOL, set())["failures"][0].startswith("sample 0: ")
    unlabelled = compare_samples(first_bad, TOL, set(), label_from=1)
    assert unlabelled["status"] == "failed" and not unlabelled["failures"][0].startswith("sample")


def test_pairs_are_made_lazily_one_at_a_time() -> None:
    made: list[int] = []

    def pairs():  # type: ignore[no-untyped-def]
        for i in range(3):
            made.append(i)
            yield pair(0.0)

    compare_samples(pairs(), TOL, set())
    assert made == [0, 1, 2]
