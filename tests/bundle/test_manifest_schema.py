"""Bundle format v1: the documented JSON Schema stays generated from the manifest models."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    json_schema,
    read_manifest,
)
from gpuxc.errors import BundleError

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DOC = REPO / "docs" / "bundle-format.schema.json"


def test_documented_schema_equals_the_generated_one() -> None:
    assert SCHEMA_DOC.is_file(), "regenerate with: python -m gpuxc.bundle.manifest > docs/bundle-format.schema.json"
    documented = json.loads(SCHEMA_DOC.read_text(encoding="utf-8"))
    assert documented == json_schema(), (
        "docs/bundle-format.schema.json is out of date; regenerate it with "
        "`python -m gpuxc.bundle.manifest > docs/bundle-format.schema.json`"
    )


def test_python_m_gpuxc_manifest_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gpuxc.bundle.manifest"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert json.loads(out) == json_schema()


def test_schema_pins_the_format_and_version() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    properties = schema["properties"]
    assert properties["format"]["const"] == FORMAT
    assert properties["format_version"]["const"] == FORMAT_VERSION
    assert set(schema["required"]) >= {
        "name",
        "version",
        "target",
        "files",
        "verification",
        "signature",
    }
    assert schema["additionalProperties"] is False


@pytest.fixture
def bundle(make_project, tmp_path: Path) -> Path:
    [result] = compile_project(make_project(models.mlp()), ["cpu"], tmp_path / "dist")
    return result.path


def test_a_compiled_manifest_reads_back_and_lists_every_file_with_its_hash(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    assert manifest.format == FORMAT and manifest.format_version == FORMAT_VERSION
    listed = {entry.path: entry for entry in manifest.files}
    on_disk = {
        p.relative_to(bundle).as_posix()
        for p in bundle.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and "__pycache__" not in p.parts
    }
    assert set(listed) == on_disk
    for path, entry in listed.items():
        data = (bundle / path).read_bytes()
        assert entry.size == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()


def test_manifest_json_is_stable_and_finite(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    text = manifest.to_json()
    assert text == (bundle / MANIFEST_NAME).read_text(encoding="utf-8")
    assert json.loads(text) == json.loads(Manifest.model_validate(json.loads(text)).to_json())


def test_non_finite_metrics_are_written_as_strings(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    manifest.verification.outputs = {"y": {"max_abs": float("inf"), "max_rel": float("nan")}}
    data = json.loads(manifest.to_json())  # strict JSON: no Infinity/NaN tokens
    assert data["verification"]["outputs"]["y"] == {"max_abs": "inf", "max_rel": "nan"}


def test_read_manifest_refuses_what_is_not_a_v1_bundle(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a gpuxc bundle"):
        read_manifest(tmp_path / "empty")
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, "format_version": 2}), encoding="utf-8")
    with pytest.raises(BundleError, match="format version 2"):
        read_manifest(bundle)
    path.write_text(json.dumps({**data, "format": "other"}), encoding="utf-8")
    with pytest.raises(BundleError, match="not a gpux-bundle manifest"):
        read_manifest(bundle)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError, match="unreadable manifest"):
        read_manifest(bundle)
    path.write_text(json.dumps({**data, "unexpected": 1}), encoding="utf-8")
    with pytest.raises(BundleError, match="malformed manifest"):
        read_manifest(bundle)
