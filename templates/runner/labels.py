"""Outputs with labels (gpux.yml ``outputs.<name>.labels``) ranked as ``{label, score}`` entries.

The raw tensor is never replaced: rankings are returned beside it (``GPUXRuntime.rank_labels``,
``"ranked"`` in ``/predict``, ``run``'s output). A score is the output's own value (a logit stays
a logit, a probability a probability): the runner does not guess whether to apply a softmax.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_TOP_K = 5
MAX_TOP_K = 1000  # a request may ask for fewer or more than the manifest's, within reason


def rank(value: Any, labels: list[str], top_k: int) -> list[list[dict[str, Any]]] | None:
    """The ``top_k`` best labels of every row (every index but the last), highest score first;
    None when the output is not a float tensor whose last dim has one value per label."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.ndim == 0 or array.shape[-1] != len(labels) or not labels:
        return None
    rows = array.reshape(-1, array.shape[-1]).astype(np.float64, copy=False)
    count = min(max(int(top_k), 1), len(labels))
    # Highest first, NaN after everything (-inf included); ties keep the label order (lexsort is stable).
    nan = np.isnan(rows)
    order = np.lexsort((np.where(nan, 0.0, -rows), nan), axis=-1)[:, :count]
    ranked = []
    for row, indices in zip(rows, order, strict=True):
        ranked.append([{"label": labels[i], "score": _score(row[i])} for i in indices.tolist()])
    return ranked


def rank_outputs(outputs: dict[str, Any], specs: dict[str, dict[str, Any]], top_k: int | None = None
                 ) -> dict[str, list[list[dict[str, Any]]]]:  # fmt: skip
    """Rankings of every labelled output; ``top_k`` overrides each output's (manifest ``top_k``, else 5)."""
    if top_k is not None and not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    ranked = {}
    for name, value in outputs.items():
        labels = (specs.get(name) or {}).get("labels")
        if not labels:
            continue
        k = top_k if top_k is not None else specs[name].get("top_k") or DEFAULT_TOP_K
        rows = rank(value, list(labels), k)
        if rows is not None:
            ranked[name] = rows
    return ranked


def text_lines(ranked: dict[str, list[list[dict[str, Any]]]]) -> list[str]:
    """Rankings for a terminal: one block per output and row, labels aligned."""
    lines = []
    for name, rows in ranked.items():
        for r, row in enumerate(rows):
            lines.append(f"{name}" + (f" [{r}]" if len(rows) > 1 else "") + ":")
            shown = [("".join(ch if ch.isprintable() else "?" for ch in entry["label"]), entry["score"])
                     for entry in row]
            width = max((len(label) for label, _ in shown), default=0)
            for label, score in shown:
                lines.append(f"  {label:<{width}}  {'nan' if score is None else f'{score:.4g}'}")
    return lines


def _score(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None  # JSON has no NaN or infinity
