"""benchmarks/precision.py's rules: disjoint calibration/validation sources, the by-hand pick, its doc section.

The full benchmark needs Pillow, scikit-image, espeak-ng and sox and takes an hour; these tests check
the parts that decide what the table says, on the data it would use where that needs nothing extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import precision  # noqa: E402
import realistic_data  # noqa: E402


@pytest.mark.skipif(not (realistic_data.LICENSES / "Apache-2.0").is_file(),
                    reason="the licence texts Debian ships in /usr/share/common-licenses are not on this host")
def test_validation_sentences_come_from_texts_calibration_never_read() -> None:
    cal, val = realistic_data.sentences()
    assert len(cal) >= 32 and len(val) >= 8
    assert not set(cal) & set(val)
    assert all(5 <= len(s.split()) <= 25 for s in cal + val)


def test_magika_features_are_the_stripped_head_and_tail_padded_with_256(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_bytes(b"\n hello")
    long = tmp_path / "long.bin"
    long.write_bytes(bytes(range(256)) * 10)
    [a, b] = realistic_data.magika_bytes([short, long], 2)
    row = a["bytes"][0]
    assert row.shape == (2048,) and a["bytes"].dtype == np.int32
    assert list(row[:5]) == list(b"hello") and row[5] == 256  # leading whitespace stripped, then padding
    assert list(row[-7:]) == list(b"\n hello") and row[1024] == 256  # the tail is right-aligned
    assert list(b["bytes"][0][:3]) == [0, 1, 2] and b["bytes"][0][-1] == 255


def test_the_by_hand_pick_counts_only_choices_inside_the_gate() -> None:
    row = {
        "by_hand": {"openvino-f32": {"speedup": 1.3, "cosine": 1.0}, "openvino-bf16": {"speedup": 2.5, "cosine": 0.99}},
        "bundles": {"cpu": {"speedup": 1.1, "variant": "fp32", "candidates": []},
                    "openvino": {"speedup": 2.2, "variant": "fp32-bf16-hint+keep2",
                                 "candidates": [{"name": "fp32-bf16-hint", "status": "failed", "min_cosine": 0.99,
                                                 "speedup_vs_fp32": 1.9}]}},
    }  # fmt: skip
    out = precision.summarise(row)
    assert out["hand"][0] == "openvino-f32"  # bf16 is faster but misses 0.999: a user could not ship it
    assert out["best"][0] == "openvino"
    assert out["plain"][1]["name"] == "fp32-bf16-hint"


def test_the_script_rewrites_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\nbefore\n", encoding="utf-8")
    precision.write_section(doc, f"{precision.SECTION[0]}\ntable 1\n{precision.SECTION[1]}\n")
    doc.write_text(doc.read_text() + "after\n", encoding="utf-8")
    precision.write_section(doc, f"{precision.SECTION[0]}\ntable 2\n{precision.SECTION[1]}\n")
    text = doc.read_text()
    assert "before" in text and "after" in text and "table 2" in text and "table 1" not in text

