"""Output comparison and latency statistics for gpuxc: the bundle runner's ``compare.py``, re-exported.

There is one implementation, ``templates/runner/compare.py``, copied verbatim into every bundle;
gpuxc loads that same file (``gpuxc.bundle.runner_source``), so build-time verification and
``python <bundle> verify`` on the device judge by the same code. Import from here in gpuxc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner's file, as mypy sees it (mypy_path has templates/)
    from runner.compare import (
        DEFAULT_TOLERANCE,
        compare,
        dense,
        judge,
        latency_stats,
        output_metrics,
        peak_rss_mb,
        worst_of,
    )
else:
    from gpuxc.bundle.runner_source import runner_module

    _runner_compare = runner_module("compare")
    DEFAULT_TOLERANCE = _runner_compare.DEFAULT_TOLERANCE
    compare = _runner_compare.compare
    dense = _runner_compare.dense
    judge = _runner_compare.judge
    latency_stats = _runner_compare.latency_stats
    output_metrics = _runner_compare.output_metrics
    peak_rss_mb = _runner_compare.peak_rss_mb
    worst_of = _runner_compare.worst_of

__all__ = [
    "DEFAULT_TOLERANCE",
    "compare",
    "dense",
    "judge",
    "latency_stats",
    "output_metrics",
    "peak_rss_mb",
    "worst_of",
]
