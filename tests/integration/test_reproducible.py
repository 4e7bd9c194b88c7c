"""--archive: <bundle>.tar.gz byte-identical across builds in other folders, umask, TZ, locale, hash seed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import onnx

from fixtures import models


def build(root: Path, env_extra: dict[str, str], umask: int) -> Path:
    project = root / "proj"
    project.mkdir(parents=True)
    onnx.save(models.tiny_cnn(), project / "model.onnx")
    (project / "gpux.yml").write_text("name: repro\nmodel:\n  source: ./model.onnx\n", encoding="utf-8")
    env = {**os.environ, **env_extra}
    done = subprocess.run(
        [sys.executable, "-c", f"import os, sys; os.umask({umask}); from gpuxc.cli import main; sys.exit(main())",
         "compile", "proj", "-o", "dist", "--archive", "--json"],
        cwd=root, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root / "dist" / "repro-1.0.0-cpu.tar.gz"


def test_two_builds_in_different_environments_are_byte_identical(tmp_path: Path) -> None:
    first = build(tmp_path / "a", {"TZ": "UTC", "LC_ALL": "C", "PYTHONHASHSEED": "1"}, 0o022)
    second = build(tmp_path / "b" / "deeper", {"TZ": "Asia/Tokyo", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "4242"},
                   0o077)  # fmt: skip
    assert hashlib.sha256(first.read_bytes()).hexdigest() == hashlib.sha256(second.read_bytes()).hexdigest()


def test_archive_entries_are_normalised_and_unpack_to_an_intact_bundle(tmp_path: Path) -> None:
    archive = build(tmp_path / "a", {"SOURCE_DATE_EPOCH": "1700000000"}, 0o022)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names, key=lambda n: n) or names[0] == "repro-1.0.0-cpu"
        assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.mtime == 1700000000 for m in members)
        assert all(m.mode in (0o644, 0o755) for m in members)
        assert not any("__pycache__" in n for n in names)
        tar.extractall(tmp_path / "x", filter="data")
    assert archive.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    done = subprocess.run([sys.executable, "-m", "gpuxc", "verify", str(tmp_path / "x" / "repro-1.0.0-cpu"),
                           "--integrity"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    shutil.rmtree(tmp_path / "x")


def test_no_host_paths_or_durations_in_a_reproducible_manifest(tmp_path: Path) -> None:
    build(tmp_path / "a", {}, 0o022)
    text = (tmp_path / "a" / "dist" / "repro-1.0.0-cpu" / "gpux-bundle.json").read_text()
    assert str(tmp_path) not in text
    assert '"seconds": 0.0' in text
