"""Where the time goes: per-op-type totals from the runtime's own profiler (``bench --profile``).

The adapters hand over ``(node, op_type, milliseconds)`` records: ONNX Runtime's profiling trace
(``SessionOptions.enable_profiling``; one ``*_kernel_time`` event per node run) or OpenVINO's
performance counters (``PERF_COUNT``; read after every inference). Only NumPy-free standard
Python here: gpuxc's tests load it on its own, like compare.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

Record = tuple[str, str, float]  # node name, op type, milliseconds


def op_table(records: list[Record], runs: int, top: int = 15) -> list[dict[str, Any]]:
    """Per op type, most time first: nodes, total and per-run milliseconds, share of the total."""
    totals: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for node, op_type, ms in records:
        totals[op_type] += ms
        nodes[op_type].add(node)
    overall = sum(totals.values()) or 1.0
    rows: list[dict[str, Any]] = [{"op_type": op, "nodes": len(nodes[op]), "total_ms": round(ms, 3),
             "ms_per_run": round(ms / max(runs, 1), 4), "share": round(ms / overall, 4)}
            for op, ms in totals.items()]  # fmt: skip
    rows.sort(key=lambda r: (-r["total_ms"], r["op_type"]))
    return rows[:top]


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'op type':<28} {'nodes':>5} {'ms/run':>10} {'share':>7}"]
    for r in rows:
        lines.append(f"{r['op_type'][:28]:<28} {r['nodes']:>5} {r['ms_per_run']:>10.4f} {r['share'] * 100:>6.1f}%")
    return lines
