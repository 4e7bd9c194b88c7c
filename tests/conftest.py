"""Shared test helpers: small projects built in code, and the real model from PyPI."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import yaml

from fixtures import models

# Tests build from scratch: a cache hit would hide the behaviour under test. The cache's own tests
# switch it back on with a folder of their own; nothing here ever touches the user's cache.
os.environ["GPUXC_NO_CACHE"] = "1"
# onnxruntime-web (the web target): the user's cached copy, read only and re-hashed on every use, so
# that each test run does not fetch 33 MB again (.ci/run fills it first). Without it, the first web
# build of the run fetches into the run's own cache folder.
_ORT_WEB = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuxc" / "npm" / "onnxruntime-web-1.30.0"
if "GPUXC_ORT_WEB_DIR" not in os.environ and _ORT_WEB.is_dir():
    os.environ["GPUXC_ORT_WEB_DIR"] = str(_ORT_WEB)
os.environ["GPUXC_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"gpuxc-test-cache-{os.getpid()}")


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the plugins installed at that moment (tests add entry points)."""
    from gpuxc.plugin.manager import get_registry

    get_registry.cache_clear()


ProjectFactory = Callable[..., Path]


@pytest.fixture
def make_project(tmp_path: Path) -> ProjectFactory:
    """Write ``model`` and a gpux.yml into a fresh folder; returns the folder.

    ``config`` is a dict merged over ``{name, model: {source}}`` or a raw YAML string.
    """
    counter = {"n": 0}

    def factory(model: onnx.ModelProto | None = None, config: dict | str | None = None, name: str = "demo") -> Path:
        counter["n"] += 1
        folder = tmp_path / f"project{counter['n']}"
        folder.mkdir()
        onnx.save(model if model is not None else models.mlp(), folder / "model.onnx")
        if isinstance(config, str):
            text = config
        else:
            data = {"name": name, "model": {"source": "./model.onnx"}}
            data.update(config or {})
            text = yaml.safe_dump(data, sort_keys=False)
        (folder / "gpux.yml").write_text(text, encoding="utf-8")
        return folder

    return factory


@pytest.fixture(scope="session")
def magika_model() -> Path:
    """The real ONNX model shipped inside the ``magika`` wheel on PyPI (cached)."""
    from fixtures.real_models import fetch_magika

    try:
        return fetch_magika()
    except RuntimeError as exc:  # no registry access: say so loudly rather than pass silently
        pytest.fail(f"cannot fetch the real test model: {exc}")
