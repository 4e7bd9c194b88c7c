"""The runner's compare.py (templates/runner/compare.py): output metrics, tolerance judgement, the
report shared by gpuxc's verification and every bundle; and the runner's layout.py, gpuxc's too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpuxc.bundle import compare as bundle_compare
from gpuxc.bundle.compare import DEFAULT_TOLERANCE, compare, judge, output_metrics
from gpuxc.bundle.runner_source import runner_source

TOL = dict(DEFAULT_TOLERANCE["fp32"])


def rng_values(shape: tuple[int, ...] = (4, 10), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_identical_outputs_pass() -> None:
    values = rng_values()
    report = compare({"y": values}, {"y": values.copy()}, TOL)
    assert report["status"] == "passed"
    assert report["failures"] == []
    metrics = report["outputs"]["y"]
    assert metrics["max_abs"] == 0.0 and metrics["mismatches"] == 0
    assert metrics["cosine"] == pytest.approx(1.0)


def test_small_differences_inside_tolerance_pass() -> None:
    values = rng_values()
    nudged = values + np.float32(TOL["atol"] / 10)
    assert compare({"y": values}, {"y": nudged}, TOL)["status"] == "passed"


def test_perturbation_beyond_tolerance_fails_with_a_mismatch_count() -> None:
    values = rng_values()
    bad = values.copy()
    bad.flat[[0, 7, 13]] += 1.0  # three elements far outside atol + rtol*|x|
    report = compare({"y": values}, {"y": bad}, TOL)
    assert report["status"] == "failed"
    metrics = report["outputs"]["y"]
    assert metrics["mismatches"] == 3
    assert metrics["mismatch_ratio"] == pytest.approx(3 / values.size)
    assert metrics["max_abs"] == pytest.approx(1.0, rel=1e-5)
    assert report["failures"] and report["failures"][0].startswith("y: 3 element(s) outside")


def test_rtol_scales_with_the_expected_magnitude() -> None:
    expected = np.array([1000.0, 1.0], dtype=np.float32)
    # 0.5 off on 1000 is within rtol=1e-3 (allowed 1.0001); 0.5 off on 1.0 is not.
    metrics = output_metrics(expected, expected + 0.5, atol=1e-4, rtol=1e-3, top1=False)
    assert metrics["mismatches"] == 1


def test_cosine_of_orthogonal_vectors_is_zero() -> None:
    metrics = output_metrics(np.array([1.0, 0.0]), np.array([0.0, 1.0]), atol=1e-4, rtol=1e-3, top1=False)
    assert metrics["cosine"] == pytest.approx(0.0, abs=1e-12)


def test_cosine_of_opposite_vectors_is_minus_one() -> None:
    values = rng_values((16,))
    metrics = output_metrics(values, -values, atol=1e-4, rtol=1e-3, top1=False)
    assert metrics["cosine"] == pytest.approx(-1.0)


def test_cosine_with_zero_vectors() -> None:
    zeros = np.zeros(4, dtype=np.float32)
    assert output_metrics(zeros, zeros, 1e-4, 1e-3, False)["cosine"] == 1.0
    assert output_metrics(zeros, np.ones(4, np.float32), 1e-4, 1e-3, False)["cosine"] == 0.0


def test_nan_in_the_same_positions_counts_as_equal() -> None:
    values = rng_values((8,))
    values[[1, 5]] = np.nan
    report = compare({"y": values}, {"y": values.copy()}, TOL)
    assert report["status"] == "passed", report["failures"]
    assert report["outputs"]["y"]["mismatches"] == 0


def test_nan_where_a_number_is_expected_is_a_mismatch() -> None:
    values = rng_values((8,))
    actual = values.copy()
    actual[2] = np.nan
    report = compare({"y": values}, {"y": actual}, TOL)
    assert report["status"] == "failed"
    assert report["outputs"]["y"]["mismatches"] == 1
    assert report["outputs"]["y"]["max_abs"] == float("inf")


def test_same_infinities_are_equal_and_opposite_ones_are_not() -> None:
    expected = np.array([np.inf, -np.inf, 1.0], dtype=np.float32)
    assert output_metrics(expected, expected.copy(), 1e-4, 1e-3, False)["mismatches"] == 0
    flipped = np.array([-np.inf, -np.inf, 1.0], dtype=np.float32)
    assert output_metrics(expected, flipped, 1e-4, 1e-3, False)["mismatches"] == 1


def test_shape_mismatch_fails() -> None:
    report = compare({"y": np.zeros((2, 3))}, {"y": np.zeros((3, 2))}, TOL)
    assert report["status"] == "failed"
    assert "shape [3, 2] != expected [2, 3]" in report["failures"][0]
    assert report["outputs"]["y"]["mismatch_ratio"] == 1.0


def test_missing_output_fails() -> None:
    report = compare({"y": np.zeros(2), "z": np.zeros(2)}, {"y": np.zeros(2)}, TOL)
    assert report["status"] == "failed"
    assert report["failures"] == ["z: missing from the target's outputs"]


def test_integer_outputs_are_compared_exactly() -> None:
    expected = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    # A difference of 1 is below no sensible tolerance for class ids; ints are exact anyway.
    loose = {**TOL, "atol": 10.0, "rtol": 10.0, "max_mismatch_ratio": 0.5}
    report = compare({"ids": expected}, {"ids": expected + np.array([0, 0, 1, 0, 0])}, loose)
    assert report["status"] == "failed"
    assert report["outputs"]["ids"]["mismatches"] == 1
    assert report["outputs"]["ids"]["exact"] is True


def test_bool_outputs_are_compared_exactly() -> None:
    expected = np.array([True, False, True])
    loose = {**TOL, "max_mismatch_ratio": 0.9}
    report = compare({"m": expected}, {"m": np.array([True, True, True])}, loose)
    assert report["status"] == "failed"
    assert report["failures"] == ["m: 1 element(s) differ"]
    assert compare({"m": expected}, {"m": expected.copy()}, TOL)["status"] == "passed"


def test_string_outputs_are_compared_exactly() -> None:
    expected = np.array(["cat", "dog"], dtype=object)
    assert compare({"s": expected}, {"s": expected.copy()}, TOL)["status"] == "passed"
    assert compare({"s": expected}, {"s": np.array(["cat", "cow"], dtype=object)}, TOL)["status"] == "failed"


def test_top1_agreement_only_for_class_outputs() -> None:
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]], dtype=np.float32)
    swapped = np.array([[0.1, 0.4, 0.5], [0.7, 0.2, 0.1]], dtype=np.float32)  # first row's argmax moves
    tolerance = {**TOL, "atol": 1.0, "rtol": 0.0, "min_cosine": 0.0}
    as_class = compare({"probs": scores}, {"probs": swapped}, tolerance, class_outputs={"probs"})
    assert as_class["outputs"]["probs"]["top1_agreement"] == pytest.approx(0.5)
    assert as_class["status"] == "failed"
    assert any("top-1 agreement" in f for f in as_class["failures"])
    not_class = compare({"probs": scores}, {"probs": swapped}, tolerance)
    assert "top1_agreement" not in not_class["outputs"]["probs"]
    assert not_class["status"] == "passed"


def test_top1_needs_more_than_one_class() -> None:
    metrics = output_metrics(np.ones((3, 1)), np.ones((3, 1)), 1e-4, 1e-3, top1=True)
    assert "top1_agreement" not in metrics


def test_judge_passes_clean_metrics() -> None:
    metrics = output_metrics(np.ones(4), np.ones(4), TOL["atol"], TOL["rtol"], top1=False)
    assert judge(metrics, TOL) == []


def test_judge_messages_name_each_violated_limit() -> None:
    metrics = {
        "mismatches": 5,
        "mismatch_ratio": 0.5,
        "max_abs": 2.0,
        "cosine": 0.5,
        "top1_agreement": 0.25,
    }
    reasons = judge(metrics, TOL)
    assert len(reasons) == 3
    assert reasons[0].startswith("5 element(s) outside atol=0.0001 rtol=0.001")
    assert "max abs 2" in reasons[0]
    assert reasons[1].startswith("cosine 0.500000 <")
    assert reasons[2].startswith("top-1 agreement 0.250 <")


def test_judge_tolerates_a_mismatch_ratio_up_to_the_limit() -> None:
    metrics = {
        "mismatches": 1,
        "mismatch_ratio": TOL["max_mismatch_ratio"],
        "max_abs": 1.0,
        "cosine": 1.0,
    }
    assert judge(metrics, TOL) == []


def test_judge_reports_errors_and_exact_mismatches_verbatim() -> None:
    assert judge({"error": "shape [1] != expected [2]"}, TOL) == ["shape [1] != expected [2]"]
    assert judge({"exact": True, "mismatches": 2}, TOL) == ["2 element(s) differ"]
    assert judge({"exact": True, "mismatches": 0}, TOL) == []


def test_default_tolerances_loosen_with_precision() -> None:
    for key in ("atol", "rtol", "max_mismatch_ratio"):
        assert DEFAULT_TOLERANCE["fp32"][key] < DEFAULT_TOLERANCE["fp16"][key] < DEFAULT_TOLERANCE["int8"][key]
    for key in ("min_cosine", "min_top1"):
        assert DEFAULT_TOLERANCE["fp32"][key] > DEFAULT_TOLERANCE["fp16"][key] >= DEFAULT_TOLERANCE["int8"][key]
    # Lower precisions may differ element by element, but never below cosine 0.999 by default.
    assert min(t["min_cosine"] for t in DEFAULT_TOLERANCE.values()) >= 0.999


def test_gpuxc_judges_with_the_runner_file_itself() -> None:
    # One implementation: gpuxc.bundle.compare re-exports the functions of the file bundles carry.
    for function in (compare, judge, output_metrics, bundle_compare.dense, bundle_compare.worst_of,
                     bundle_compare.latency_stats, bundle_compare.peak_rss_mb):  # fmt: skip
        assert Path(function.__code__.co_filename) == runner_source("compare"), function.__name__


def test_scalar_string_outputs_compare_exactly() -> None:
    # A 0-d object array (StringConcat of two scalars) has nothing to iterate.
    same = compare({"z": np.array("ab", dtype=object)}, {"z": np.array("ab", dtype=object)}, TOL)
    assert same["status"] == "passed" and same["outputs"]["z"]["exact"] is True
    other = compare({"z": np.array("ab", dtype=object)}, {"z": np.array("ba", dtype=object)}, TOL)
    assert other["status"] == "failed" and other["outputs"]["z"]["mismatches"] == 1
