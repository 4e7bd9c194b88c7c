"""Real models compiled for `web` and verified in headless Chromium on ONNX Runtime Web's WASM backend:
a CNN (PP-OCR's text-orientation classifier, with image preprocessing compiled in), a recurrent model
with If subgraphs and state (silero-vad) and a text encoder (all-MiniLM-L6-v2 with its tokenizer).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gpuxc_web.target import find_chromium

from fixtures import has_module
from fixtures.real_models import PADDLE_CLS, SILERO_VAD, WheelModel, fetch
from gpuxc.build.pipeline import compile_project

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(find_chromium() is None or not has_module("playwright"),
                       reason="needs Chromium (apt-get install chromium) and Playwright (pip install playwright)"),
]


def model_or_fail(model: WheelModel) -> Path:
    try:
        return fetch(model)
    except RuntimeError as exc:  # no registry access: say so loudly rather than pass silently
        pytest.fail(f"cannot fetch {model.key}: {exc}")


def compile_web(folder: Path, source: Path, config: str, extra: tuple[Path, ...] = ()) -> dict:  # type: ignore[type-arg]
    folder.mkdir(parents=True)
    shutil.copyfile(source, folder / "model.onnx")
    for path in extra:
        shutil.copyfile(path, folder / path.name)
    (folder / "gpux.yml").write_text(f"name: real\nmodel:\n  source: model.onnx\n{config}", encoding="utf-8")
    [result] = compile_project(folder, ["web"], folder / "dist", use_cache=False)
    doc: dict = json.loads((result.path / "gpux-bundle.json").read_text(encoding="utf-8"))  # type: ignore[type-arg]
    assert doc["verification"]["status"] == "passed", doc["verification"]
    assert "wasm" in doc["verification"]["runtime"]
    return doc


def test_cnn_with_image_preprocessing(tmp_path: Path) -> None:
    config = "preprocessing:\n  resize: [192, 48]\n  normalize: -1-1\n  channels: bgr\n"
    doc = compile_web(tmp_path / "cls", model_or_fail(PADDLE_CLS), config)
    assert doc["inputs"][0]["dtype"] == "uint8"


def test_recurrent_model_with_subgraphs_and_state(tmp_path: Path) -> None:
    doc = compile_web(tmp_path / "vad", model_or_fail(SILERO_VAD), "")
    assert {i["name"] for i in doc["inputs"]} == {"input", "state", "sr"}


def test_text_encoder_with_its_tokenizer(tmp_path: Path) -> None:
    from fixtures.minilm import fetch_minilm

    try:
        model, tokenizer = fetch_minilm()
    except RuntimeError as exc:
        pytest.fail(f"cannot fetch MiniLM: {exc}")
    doc = compile_web(tmp_path / "minilm", model, "preprocessing:\n  tokenizer: tokenizer.json\n  max_length: 32\n",
                      (tokenizer,))  # fmt: skip
    assert doc["reference"]["origin"] == "sentences"
