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
    """--optimize auto: one line per candidate summary (``Candidate.summary``): its layers by precision,
    and for a repaired variant the nodes kept in float and why (their share of the error)."""
    w = max([14, *(len(s["name"]) for s in summaries)])
    lines = [f"  {'variant':<{w}} {'status':<12} {'latency ms':>10} {'vs fp32':>8} {'min cosine':>11}  "
             f"{'layers':<22} reason"]  # fmt: skip
    for s in summaries:
        lat = f"{s['latency_ms']:.3f}" if s.get("latency_ms") else "-"
        ratio = f"{s['speedup_vs_fp32']:.2f}x" if s.get("speedup_vs_fp32") else "-"
        cos = f"{s['min_cosine']:.6f}" if s.get("min_cosine") is not None else "-"
        layers = ", ".join(f"{k} {v}" for k, v in (s.get("layer_precisions") or {}).items()) or "-"
        lines.append(f"  {s['name']:<{w}} {s['status']:<12} {lat:>10} {ratio:>8} {cos:>11}  {layers:<22} "
                     f"{s.get('reason') or ''}")  # fmt: skip
        if s.get("kept_float"):
            lines.append(f"  {'':<{w}} keeps in float: {kept_text(s['kept_float'], s.get('sensitive_nodes', []))}")
    return lines


def kept_text(kept: list[str], ranking: list[dict[str, Any]], shown: int = 6) -> str:
    """``a (Conv, own error 0.12), b (...)``: the kept nodes with the contribution the ranking gave them."""
    by_node = {r["node"]: r for r in ranking}
    parts = []
    for node in kept[:shown]:
        r = by_node.get(node)
        parts.append(f"{node} ({r['op_type']}, own error {r['contribution']:.3g})" if r else node)
    more = f" and {len(kept) - shown} more" if len(kept) > shown else ""
    return ", ".join(parts) + more


def _cell(metrics: dict[str, Any], key: str, fmt: str) -> str:
    value = metrics.get(key)
    return format(value, fmt) if isinstance(value, (int, float)) else "-"
