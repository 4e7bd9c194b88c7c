"""The runner's input checks (templates/runner/inputs.py): the fast path for arrays already right,
and that every check still applies once shapes were accepted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gpuxc.bundle.runner_source import runner_module

inputs = runner_module("inputs")
SPECS = [
    {"name": "ids", "dtype": "int64", "shape": ["batch", "seq"], "max_length": 8},
    {"name": "mask", "dtype": "int64", "shape": ["batch", "seq"]},
    {"name": "scale", "dtype": "float32", "shape": [1]},
]


def good() -> dict[str, Any]:
    return {"ids": np.ones((2, 4), np.int64), "mask": np.ones((2, 4), np.int64), "scale": np.ones(1, np.float32)}


def test_arrays_of_the_declared_dtypes_are_fed_as_they_are() -> None:
    checks = inputs.InputChecks(SPECS)
    data = good()
    for _ in range(2):  # the first call checks in full, the second takes the accepted-shapes path
        feeds = checks.prepare(data)
        assert all(feeds[name] is data[name] for name in data)


def test_accepted_shapes_are_remembered_and_only_those() -> None:
    checks = inputs.InputChecks(SPECS)
    checks.prepare(good())
    assert checks._accepted == {((2, 4), (2, 4), (1,))}
    with pytest.raises(inputs.InputError, match="dim 1 \\('seq'\\) is 5 here but 4"):
        checks.prepare({**good(), "mask": np.ones((2, 5), np.int64)})
    assert len(checks._accepted) == 1  # a refused combination is never remembered


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ids": np.ones((2, 4), np.float32)}, "expected int64, got float32"),
        ({"ids": np.ones((2, 9), np.int64), "mask": np.ones((2, 9), np.int64)}, "exceeds max_length 8"),
        ({"scale": np.ones(2, np.float32)}, "dim 0 must be 1"),
        ({"mask": np.ones((2, 4, 1), np.int64)}, "expected rank 2"),
        ({"extra": np.ones(1)}, "unknown input 'extra'"),
    ],
)
def test_checks_still_apply_after_a_good_call(change: dict[str, Any], message: str) -> None:
    checks = inputs.InputChecks(SPECS)
    checks.prepare(good())
    with pytest.raises(inputs.InputError, match=message):
        checks.prepare({**good(), **change})


def test_a_missing_input_is_named_after_a_good_call() -> None:
    checks = inputs.InputChecks(SPECS)
    checks.prepare(good())
    data = good()
    del data["scale"]
    data["other"] = np.ones(1, np.float32)  # same count of inputs: the fast path must not take it
    with pytest.raises(inputs.InputError, match="unknown input 'other'"):
        checks.prepare(data)


def test_conversions_and_range_checks_apply_to_other_dtypes() -> None:
    checks = inputs.InputChecks([{"name": "k", "dtype": "int32", "shape": [2]}])
    assert checks.prepare({"k": [1, 2]})["k"].dtype == np.int32
    with pytest.raises(inputs.InputError, match="out of range for int32"):
        checks.prepare({"k": np.array([1, 2**40], np.int64)})
    with pytest.raises(inputs.InputError, match="expected int32, got float64"):
        checks.prepare({"k": np.array([1.5, 2.0])})


def test_string_inputs_are_always_converted() -> None:
    checks = inputs.InputChecks([{"name": "s", "dtype": "string", "shape": [1]}])
    assert checks.prepare({"s": ["a"]})["s"].dtype == object
    assert checks.prepare({"s": np.array(["b"], dtype=object)})["s"].tolist() == ["b"]
