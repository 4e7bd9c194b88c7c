"""benchmarks/conformance.py works end to end on one old-opset case (docs/conformance.md comes from it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_conformance_runs_one_case_through_raw_runtimes_and_gpuxc_bundles(tmp_path: Path) -> None:
    # Add-6 with legacy broadcast: raw ONNX Runtime cannot load it; the gpuxc cpu bundle runs it.
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "conformance.py"), "--suite", "data", "--filter",
         "pytorch-operator/test_operator_add_size1_broadcast$", "--targets", "cpu", "--jobs", "1", "--work",
         str(tmp_path), "--no-doc"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and "pass rate" not in line}  # fmt: skip
    assert rows["raw ONNX Runtime"][:2] == ["0", "1"]  # pass 0, fails 1
    assert rows["gpuxc `-t cpu`"][0] == "1" and rows["gpuxc `-t cpu`"][-1] == "100.0%"
    assert "gpuxc `-t cpu` passes 1 case(s) raw ONNX Runtime fails." in proc.stdout
    assert (tmp_path / "results-data.jsonl").is_file()


def test_each_suite_rewrites_only_its_own_section_of_the_doc(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from conformance_report import HEADER, update_doc

    doc = tmp_path / "conformance.md"
    update_doc(doc, "data", "data table 1\n")
    update_doc(doc, "node", "node table 1\n")
    doc.write_text(doc.read_text().replace(HEADER, "an old header\n"))
    update_doc(doc, "data", "data table 2\n")
    text = doc.read_text()
    assert text.startswith(HEADER) and "an old header" not in text
    assert "data table 2" in text and "data table 1" not in text and "node table 1" in text
