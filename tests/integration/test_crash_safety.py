"""A build killed with SIGKILL at any moment never leaves a partial bundle or damages a good one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from fixtures import models

KILLS = 6  # bounded: each kill is one short build


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_builds_leave_either_the_old_or_a_complete_new_bundle(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    onnx.save(models.tiny_cnn(), project / "model.onnx")
    (project / "gpux.yml").write_text("name: crash\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "gpuxc", "compile", str(project), "-o", str(tmp_path / "dist")]
    final = tmp_path / "dist" / "crash-1.0.0-cpu"
    assert subprocess.run(cmd, capture_output=True).returncode == 0  # a good bundle to protect

    def intact() -> bool:
        check = [sys.executable, "-m", "gpuxc", "verify", str(final), "--integrity"]
        return subprocess.run(check, capture_output=True).returncode == 0

    full = time.monotonic()
    subprocess.run(cmd, capture_output=True, check=True)
    duration = time.monotonic() - full
    rng = random.Random(0)
    for _ in range(KILLS):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, duration))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # Whatever moment the kill hit, the final path holds a complete bundle.
        assert final.is_dir() and intact()
    leftovers = [p.name for p in (tmp_path / "dist").iterdir() if p.name != final.name]
    assert all(name.startswith(".gpuxc-staging-") for name in leftovers)  # hidden scratch, never the bundle name
    # The next build removes what killed builds left behind.
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert [p.name for p in (tmp_path / "dist").iterdir()] == [final.name]


def test_only_staging_folders_of_dead_builds_are_removed(tmp_path: Path) -> None:
    from gpuxc.bundle.writer import remove_abandoned_staging

    live = tmp_path / f".gpuxc-staging-{os.getppid()}-demo-1-cpu-abc"  # a running process: a concurrent build
    dead = tmp_path / ".gpuxc-staging-999999999-demo-1-cpu-def"  # no such process
    mine = tmp_path / f".gpuxc-staging-{os.getpid()}-demo-1-cpu-ghi"
    for path in (live, dead, mine):
        path.mkdir()
    assert remove_abandoned_staging(tmp_path) == [dead.name]
    assert live.exists() and mine.exists() and not dead.exists()
