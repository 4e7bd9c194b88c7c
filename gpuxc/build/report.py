"""The tables a build prints on stderr: verification metrics per output, and --optimize auto's candidates.

``gpuxc verify --against`` prints its metrics with the same table. The manifest holds the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuxc.bundle.manifest import Verification

# Imports nothing heavy: the CLI uses it.


def metrics_table(outputs: dict[str, Any], name_width: int = 20) -> list[str]:
    """One line per output: max abs, max rel, cosine, top-1 agreement, mismatches ("-" where absent)."""
    w = name_width
    lines = [f"  {'output':<{w}} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'top-1':>7} {'mismatches':>10}"]
    for name, m in outputs.items():
        lines.append(
            f"  {name[:w]:<{w}} {_cell(m, 'max_abs', '.3g'):>10} {_cell(m, 'max_rel', '.3g'):>10} "
            f"{_cell(m, 'cosine', '.6f'):>10} {_cell(m, 'top1_agreement', '.3f'):>7} {_cell(m, 'mismatches', 'd'):>10}"
        )
    return lines


def print_verification(verification: Verification, say: Callable[[str], None]) -> None:
    """The verification of a build: its metrics table and status, or why it is unverified."""
    if verification.status == "unverified":
        say(f"verification: unverified ({verification.reason})")
        return
    for line in metrics_table(verification.outputs):
        say(line)
    say(f"verification {verification.status}")


def candidates_table(summaries: list[dict[str, Any]]) -> list[str]:
    """--optimize auto: one line per candidate summary (``Candidate.summary``)."""
    lines = [f"  {'variant':<14} {'status':<12} {'latency ms':>10} {'vs fp32':>8} {'min cosine':>11}  reason"]
    for s in summaries:
        lat = f"{s['latency_ms']:.3f}" if s["latency_ms"] else "-"
        ratio = f"{s['speedup_vs_fp32']:.2f}x" if s["speedup_vs_fp32"] else "-"
        cos = f"{s['min_cosine']:.6f}" if s["min_cosine"] is not None else "-"
        lines.append(f"  {s['name']:<14} {s['status']:<12} {lat:>10} {ratio:>8} {cos:>11}  {s['reason'] or ''}")
    return lines


def _cell(metrics: dict[str, Any], key: str, fmt: str) -> str:
    value = metrics.get(key)
    return format(value, fmt) if isinstance(value, (int, float)) else "-"
