"""Fuzz figures at the end of the pytest run (and as JSON in $GPUXC_FUZZ_REPORT when set)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    from tests.fuzz.harness import FIGURES

    if not FIGURES:
        return
    terminalreporter.section("fuzz figures")
    for figures in FIGURES.values():
        terminalreporter.write_line(figures.line())
        kinds = ", ".join(f"{k} {v}" for k, v in figures.kinds.most_common())
        terminalreporter.write_line(f"  generated: {kinds}")
        if figures.uncaught_sites:
            sites = ", ".join(f"{k} ({v})" for k, v in figures.uncaught_sites.most_common())
            terminalreporter.write_line(f"  uncaught: {sites}")
        if figures.third_party_temp_files:
            terminalreporter.write_line(
                f"  onnxruntime's $TMPDIR/.ses left by a child process: {figures.third_party_temp_files} (not counted)"
            )
        if figures.warned:
            warned = ", ".join(f"{k} {v}" for k, v in figures.warned.most_common())
            terminalreporter.write_line(f"  warnings (shown to users, not errors): {warned}")
    target = os.environ.get("GPUXC_FUZZ_REPORT")
    if target:
        data = {name: figures.to_json() for name, figures in FIGURES.items()}
        Path(target).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"fuzz figures written to {target}")
