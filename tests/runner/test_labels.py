"""Labelled outputs ranked as {label, score} (templates/runner/labels.py): order, top_k, rows, and
what is left alone."""

from __future__ import annotations

import numpy as np
import pytest

from gpuxc.bundle.runner_source import runner_module

labels = runner_module("labels")
NAMES = ["cat", "dog", "bird", "fish", "frog", "horse"]


def test_rows_are_ranked_best_first_with_top_k() -> None:
    logits = np.array([[0.1, 2.0, -1.0, 0.5, 3.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]], np.float32)
    ranked = labels.rank(logits, NAMES, 3)
    assert [[e["label"] for e in row] for row in ranked] == [["frog", "dog", "fish"], ["cat", "dog", "bird"]]
    assert ranked[0][0]["score"] == pytest.approx(3.0)
    assert len(labels.rank(logits, NAMES, 100)[0]) == 6  # capped at the label count
    assert labels.rank(logits[0], NAMES, 2) == [ranked[0][:2]]  # a 1-D output is one row


def test_ties_keep_label_order_and_nan_goes_last() -> None:
    row = np.array([1.0, np.nan, 1.0, 2.0, -np.inf, 0.0])
    ranked = labels.rank(row, NAMES, 6)[0]
    assert [e["label"] for e in ranked] == ["fish", "cat", "bird", "horse", "frog", "dog"]  # -inf, then NaN
    assert ranked[-1]["score"] is None and ranked[-2]["score"] is None  # JSON has no NaN or infinity


def test_rank_outputs_uses_each_outputs_top_k_and_skips_what_does_not_fit() -> None:
    specs = {
        "probs": {"labels": NAMES, "top_k": 2},
        "default": {"labels": NAMES},
        "boxes": {"labels": NAMES},  # labels that do not match the last dim: not ranked
        "ids": {"labels": NAMES},  # a string output: not ranked
        "plain": {},
    }
    row = np.arange(6, dtype=np.float32)[None]
    outputs = {"probs": row, "default": row, "boxes": np.zeros((1, 4)), "ids": np.array(NAMES, object), "plain": row}
    ranked = labels.rank_outputs(outputs, specs)
    assert set(ranked) == {"probs", "default"}
    assert len(ranked["probs"][0]) == 2 and len(ranked["default"][0]) == labels.DEFAULT_TOP_K
    assert len(labels.rank_outputs(outputs, specs, top_k=1)["probs"][0]) == 1
    with pytest.raises(ValueError, match="top_k"):
        labels.rank_outputs(outputs, specs, top_k=0)


def test_text_lines_for_a_terminal() -> None:
    ranked = {"probs": labels.rank(np.array([0.2, 0.7, 0.1, 0, 0, 0]), ["cat", "dog\x1b[31m", "bird", *NAMES[3:]], 2)}
    assert labels.text_lines(ranked) == ["probs:", "  dog?[31m  0.7", "  cat       0.2"]  # no escape reaches a tty
