"""Fixtures shared by the project tests: a working folder, a tokenizer.json built in code."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import has_module


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so that error messages name the file as ``gpux.yml``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tokenizer(tmp_path: Path) -> Path:
    """A word-level tokenizer.json in tmp_path (fixtures/text_models.py), or a skip without ``tokenizers``."""
    from fixtures.text_models import write_tokenizer

    if not has_module("tokenizers"):
        pytest.skip("needs the tokenizers package")
    write_tokenizer(tmp_path / "tokenizer.json")
    return tmp_path / "tokenizer.json"
