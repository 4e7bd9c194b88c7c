"""The tables a build prints: verification metrics (also `verify --against`'s) and auto's candidates."""

from __future__ import annotations

from gpuxc.build.report import candidates_table, metrics_table, print_verification
from gpuxc.bundle.manifest import Verification


def test_metrics_table_formats_each_metric_and_dashes_the_missing() -> None:
    header, row = metrics_table({"probs": {"max_abs": 0.00012345, "cosine": 0.99999, "mismatches": 0}})
    assert header.split() == ["output", "max", "abs", "max", "rel", "cosine", "top-1", "mismatches"]
    assert row.split() == ["probs", "0.000123", "-", "0.999990", "-", "0"]


def test_metrics_table_name_column_is_as_wide_as_asked() -> None:
    name = "x" * 30
    narrow = metrics_table({name: {}})[1]
    wide = metrics_table({name: {}}, name_width=24)[1]
    assert narrow.startswith("  " + "x" * 20 + " ") and wide.startswith("  " + "x" * 24 + " ")


def test_print_verification_says_why_a_build_is_unverified() -> None:
    lines: list[str] = []
    print_verification(Verification(status="unverified", reason="no device", tolerance={}), lines.append)
    assert lines == ["verification: unverified (no device)"]
    lines.clear()
    print_verification(Verification(status="passed", tolerance={}, outputs={"y": {"cosine": 1.0}}), lines.append)
    assert lines[-1] == "verification passed" and len(lines) == 3


def test_candidates_table_one_line_per_candidate() -> None:
    summary = {"name": "int8-dynamic", "status": "passed", "reason": None, "latency_ms": 2.0,
               "speedup_vs_fp32": 1.5, "min_cosine": 0.9991}  # fmt: skip
    skipped = {**summary, "name": "fp16", "status": "skipped", "reason": "why", "latency_ms": None,
               "speedup_vs_fp32": None, "min_cosine": None}  # fmt: skip
    _, row, other = candidates_table([summary, skipped])
    assert row.split() == ["int8-dynamic", "passed", "2.000", "1.50x", "0.999100", "-"]
    assert other.split() == ["fp16", "skipped", "-", "-", "-", "-", "why"]


def test_candidates_table_shows_layers_by_precision_and_why_nodes_were_kept() -> None:
    repaired = {"name": "int8-static+keep2", "status": "passed", "reason": None, "latency_ms": 1.0,
                "speedup_vs_fp32": 2.0, "min_cosine": 0.9995, "layer_precisions": {"fp32": 2, "int8": 30},
                "kept_float": ["mm3", "mm9"], "sensitive_nodes": [
                    {"node": "mm3", "op_type": "MatMul", "error": 0.9, "contribution": 0.8}]}  # fmt: skip
    _, row, kept = candidates_table([repaired])
    assert "fp32 2, int8 30" in row
    assert kept.split(":", 1)[1].strip() == "mm3 (MatMul, own error 0.8), mm9"
