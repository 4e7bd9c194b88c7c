"""A text model without calibration data is verified on real sentences through its own tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.text_models import write_bag_model, write_tokenizer
from gpuxc.build.project import REFERENCE_TEXTS, Project, load_project

tokenizers = pytest.importorskip("tokenizers")


def text_project(folder: Path, block: str) -> Project:
    """The tiny bag-of-words model with its tokenizer, ``block`` appended under ``preprocessing:``, loaded."""
    write_tokenizer(folder / "tokenizer.json")
    write_bag_model(folder / "model.onnx")
    (folder / "gpux.yml").write_text(
        "name: bag\nmodel:\n  source: model.onnx\npreprocessing:\n  tokenizer: tokenizer.json\n" + block
    )
    return load_project(folder)


def test_reference_inputs_are_sentences_through_the_project_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    project = text_project(tmp_path, "  max_length: 32\n")
    assert project.reference_origin == "sentences"
    expected = Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(REFERENCE_TEXTS[0])
    np.testing.assert_array_equal(project.reference_inputs["input_ids"][0], expected.ids)
    np.testing.assert_array_equal(project.reference_inputs["attention_mask"][0], np.ones(len(expected.ids)))
    # Lossy variants are judged on the other sentences, of their own lengths.
    lengths = {f["input_ids"].shape[1] for f, _ in project.extra_references}
    assert len(project.extra_references) == 4 and len(lengths) > 1


def test_sentences_over_max_length_without_truncation_are_left_out(tmp_path: Path) -> None:
    project = text_project(tmp_path, "  max_length: 3\n  truncation: false\n")
    assert project.reference_origin == "sentences"
    assert project.reference_inputs["input_ids"].tolist() == [[2, 9, 3]]  # "short" alone fits in 3 tokens


def test_static_shape_targets_are_specialised_to_max_length_tokens(tmp_path: Path) -> None:
    from gpuxc.project.reference import resolve_shapes

    project = text_project(tmp_path, "  max_length: 24\n")
    shapes = resolve_shapes(project.model.signature, project.config)
    assert shapes == {"input_ids": [1, 24], "attention_mask": [1, 24]}
