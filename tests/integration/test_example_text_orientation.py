"""examples/text-orientation end to end: a real classifier (PP-OCR's text-orientation model from its
PyPI wheel) compiled with its gpux.yml's preprocessing block, run through the bundle's CLI on JPEG
files: the ranked labels say which way up the text is."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuxc.build.pipeline import compile_project

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "text-orientation"
pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example project in a scratch folder, with prepare.py's model and JPEGs."""
    folder = tmp_path_factory.mktemp("text-orientation")
    shutil.copy(EXAMPLE / "gpux.yml", folder / "gpux.yml")
    spec = importlib.util.spec_from_file_location("prepare_example", EXAMPLE / "prepare.py")
    assert spec is not None and spec.loader is not None
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    try:
        shutil.copyfile(prepare.fetch(prepare.PADDLE_CLS), folder / "model.onnx")
    except RuntimeError as exc:  # no registry access: say so loudly rather than pass silently
        pytest.fail(f"cannot fetch the PP-OCR classifier: {exc}")
    line = prepare.text_line(prepare.TEXT)
    line.save(folder / "upright.jpg", quality=90)
    line.rotate(180).save(folder / "upside-down.jpg", quality=90)
    return folder


def test_the_bundle_ranks_orientations_of_jpeg_files(example: Path) -> None:
    [result] = compile_project(example, ["cpu"], example / "dist")
    assert result.verification["status"] == "passed"
    manifest = json.loads((result.path / "gpux-bundle.json").read_text())
    assert manifest["preprocessing"]["kind"] == "image" and manifest["preprocessing"]["channels"] == "bgr"
    for photo, expected in (("upright.jpg", "0"), ("upside-down.jpg", "180")):
        proc = subprocess.run([sys.executable, str(result.path), "run", "--input", str(example / photo)],
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        ranked = json.loads(proc.stdout)["ranked"]["save_infer_model/scale_0.tmp_1"][0]
        assert [r["label"] for r in ranked] == [expected, "180" if expected == "0" else "0"]
        assert ranked[0]["score"] > 0.8, ranked


def test_inspect_shows_what_the_graph_does_to_the_pixels(example: Path) -> None:
    from typer.testing import CliRunner

    from gpuxc.cli.app import app

    [result] = compile_project(example, ["cpu"], example / "dist")
    out = CliRunner().invoke(app, ["inspect", str(result.path)])
    assert out.exit_code == 0, out.output
    assert "preprocessing: uint8 'image' [N, H, W, 3] -> resize stretch to 192x48, bgr" in out.output
    assert "input image: uint8" in out.output
