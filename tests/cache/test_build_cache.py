"""The build cache: hits are byte-identical to cold builds, keys see every input, corruption is rebuilt."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fixtures import models
from gpuxc.build import pipeline
from gpuxc.build.pipeline import compile_project
from gpuxc.cache import key as cache_key
from gpuxc.cache import store as cache_mod
from tests.integration.conftest import Proc, run_cmd


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("GPUXC_NO_CACHE", raising=False)
    folder = tmp_path / "cache"
    monkeypatch.setenv("GPUXC_CACHE_DIR", str(folder))
    return folder


def build(project: Path, out: Path, **kwargs) -> tuple[list[pipeline.BundleResult], list[str]]:
    said: list[str] = []
    results = compile_project(project, ["cpu"], out, progress=said.append, **kwargs)
    return results, said


def hit(said: list[str]) -> bool:
    return any("cache hit" in line for line in said)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def entry_bundles(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("v1/??/*/bundle"))


def test_warm_build_is_a_byte_identical_hit_without_loading_the_model(
    make_project, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(models.tiny_cnn())
    cold, said = build(project, tmp_path / "a")
    assert not hit(said) and len(entry_bundles(cache_dir)) == 1

    def no_model_load(*_a, **_k):
        raise AssertionError("a cache hit must not load the model")

    monkeypatch.setattr(pipeline, "project_for", no_model_load)
    warm, said = build(project, tmp_path / "b")
    assert hit(said)
    assert tree(cold[0].path) == tree(warm[0].path)
    assert warm[0].verification["status"] == cold[0].verification["status"] == "passed"
    assert warm[0].variant == cold[0].variant


def test_hit_from_another_folder_and_archive_identical(make_project, cache_dir: Path, tmp_path: Path) -> None:
    project = make_project(models.tiny_cnn())
    cold, _ = build(project, tmp_path / "a", archive=True)
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(project, moved)
    warm, said = build(moved, tmp_path / "b", archive=True)
    assert hit(said)
    assert cold[0].archive.read_bytes() == warm[0].archive.read_bytes()


def test_no_cache_neither_reads_nor_writes(make_project, cache_dir: Path, tmp_path: Path) -> None:
    project = make_project(models.mlp())
    _, said = build(project, tmp_path / "a", use_cache=False)
    assert not cache_dir.exists()
    build(project, tmp_path / "b")
    _, said = build(project, tmp_path / "c", use_cache=False)
    assert not hit(said)


@pytest.mark.parametrize(
    "change",
    ["config", "model", "precision", "archive", "external-data", "calibration"],
)
def test_key_sees_every_input(make_project, cache_dir: Path, tmp_path: Path, change: str) -> None:
    model = models.mlp()
    if change == "external-data":
        folder = tmp_path / "ext"
        folder.mkdir()
        models.save(model, folder / "model.onnx", external_data=True)
        (folder / "gpux.yml").write_text(yaml.safe_dump({"name": "demo", "model": {"source": "./model.onnx"}}))
        project = folder
    else:
        project = make_project(model)
    if change == "calibration":
        data = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
        _write_calibration(project, data)
    build(project, tmp_path / "a")
    kwargs = {}
    if change == "config":
        text = (project / "gpux.yml").read_text() + "description: another description\n"
        (project / "gpux.yml").write_text(text)
    elif change == "model":
        other = models.mlp()
        other.graph.initializer[0].raw_data = np.zeros_like(np.frombuffer(other.graph.initializer[0].raw_data,
                                                                          np.float32)).tobytes()  # fmt: skip
        import onnx

        onnx.save(other, project / "model.onnx")
    elif change == "precision":
        kwargs["precision"] = "int8-dynamic"
    elif change == "archive":
        kwargs["archive"] = True
    elif change == "external-data":
        weights = next(p for p in project.iterdir() if p.suffix not in (".onnx", ".yml"))
        raw = bytearray(weights.read_bytes())
        raw[:4] = bytes(4)  # the first float becomes 0.0: other weights, same model file
        weights.write_bytes(bytes(raw))
    elif change == "calibration":
        data = {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
        _write_calibration(project, data)
    _, said = build(project, tmp_path / "b", **kwargs)
    assert not hit(said), f"changing the {change} must miss the cache"
    # Other weights beside the same model file replace the entry; every other change adds one.
    assert len(entry_bundles(cache_dir)) == (1 if change == "external-data" else 2)
    _, said = build(project, tmp_path / "c", **kwargs)
    assert hit(said)


def _write_calibration(project: Path, data: dict[str, np.ndarray]) -> None:
    np.savez(project / "calibration.npz", **data)
    config = yaml.safe_load((project / "gpux.yml").read_text())
    config.setdefault("build", {})["calibration"] = {"data": "./calibration.npz"}
    (project / "gpux.yml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("damage", ["file-changed", "file-truncated", "file-missing", "file-added", "entry-json"])
def test_corrupted_entry_is_discarded_and_rebuilt(make_project, cache_dir: Path, tmp_path: Path, damage: str) -> None:
    project = make_project(models.tiny_cnn())
    # --archive builds are reproducible, so the rebuild can be compared byte for byte.
    cold, _ = build(project, tmp_path / "a", archive=True)
    [stored] = entry_bundles(cache_dir)
    model = stored / "model" / "model.onnx"
    if damage == "file-changed":
        raw = bytearray(model.read_bytes())
        raw[-1] ^= 0xFF
        model.write_bytes(bytes(raw))
    elif damage == "file-truncated":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "file-missing":
        (stored / "runner" / "api.py").unlink()
    elif damage == "file-added":
        (stored / "runner" / "evil.py").write_text("import os\n")
    elif damage == "entry-json":
        (stored.parent / "entry.json").write_text("{not json")
    warm, said = build(project, tmp_path / "b", archive=True)
    assert not hit(said)
    assert any("corrupted" in line and "discarded" in line for line in said), said
    assert tree(warm[0].path) == tree(cold[0].path)
    # The rebuilt entry is sound again: the next build is a hit.
    _, said = build(project, tmp_path / "c", archive=True)
    assert hit(said)


def test_unwritable_cache_is_a_warning(make_project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUXC_NO_CACHE", raising=False)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    results, said = build(make_project(models.mlp()), tmp_path / "a", cache_dir=blocker / "cache")
    assert results[0].path.is_dir()
    assert any("could not store" in line for line in said)


def test_store_race_keeps_one_entry_and_no_temporaries(tmp_path: Path) -> None:
    bundle_dir = tmp_path / "bundle"
    (bundle_dir / "model").mkdir(parents=True)
    (bundle_dir / "model" / "m.onnx").write_bytes(b"x" * 10)
    store = cache_mod.BuildCache(tmp_path / "cache")
    key = "ab" * 32
    assert store.store(key, bundle_dir, {"target": "cpu"})
    assert store.store(key, bundle_dir, {"target": "cpu"})  # already there: kept as is
    assert [p.name for p in (tmp_path / "cache" / "v1").iterdir()] == ["ab"]
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700  # entries become bundles: private
    dest = tmp_path / "dest"
    dest.mkdir()
    info = store.restore(key, dest, lambda paths: {})
    assert info is not None and (dest / "model" / "m.onnx").read_bytes() == b"x" * 10


def test_code_digest_changes_with_a_template_or_plugin_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "someplugin"
    package.mkdir()
    (package / "__init__.py").write_text("X = 1\n")
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "a.j2").write_text("{{ x }}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = cache_key.code_digest(["someplugin.target"], [templates])
    (package / "__init__.py").write_text("X = 2\n")
    second = cache_key.code_digest(["someplugin.target"], [templates])
    (templates / "a.j2").write_text("{{ y }}\n")
    third = cache_key.code_digest(["someplugin.target"], [templates])
    assert first["someplugin"] != second["someplugin"]
    assert second["templates:templates"] != third["templates:templates"]
    assert first["gpuxc"] == third["gpuxc"]


def test_cache_cli_ls_and_clear(make_project, cache_dir: Path, tmp_path: Path, gpuxc_script: Path) -> None:
    def gpuxc_cli(*args: object, env: dict[str, str] | None = None) -> Proc:
        return run_cmd([gpuxc_script, *map(str, args)], env={"GPUXC_CACHE_DIR": str(cache_dir), **(env or {})})

    project = make_project(models.mlp())
    first = gpuxc_cli("compile", project, "-t", "cpu", "-o", tmp_path / "a", env={"GPUXC_NO_CACHE": ""})
    assert first.returncode == 0, first.stderr
    second = gpuxc_cli("compile", project, "-t", "cpu", "-o", tmp_path / "b", env={"GPUXC_NO_CACHE": ""})
    assert second.returncode == 0 and "cache hit" in second.stderr
    listed = gpuxc_cli("cache", "ls", "--json", env={"GPUXC_NO_CACHE": ""})
    data = json.loads(listed.stdout)
    assert [(e["name"], e["target"], e["variant"]) for e in data["entries"]] == [("demo", "cpu", "fp32")]
    assert data["entries"][0]["size_bytes"] > 0
    text = gpuxc_cli("cache", "ls")
    assert "demo-" in text.stdout and "cpu" in text.stdout
    cleared = gpuxc_cli("cache", "clear")
    assert cleared.returncode == 0 and "removed 1 entries" in cleared.stderr
    assert json.loads(gpuxc_cli("cache", "ls", "--json").stdout)["entries"] == []
    third = gpuxc_cli("compile", project, "-t", "cpu", "-o", tmp_path / "c", "--no-cache", env={"GPUXC_NO_CACHE": ""})
    assert third.returncode == 0 and "cache hit" not in third.stderr
    assert json.loads(gpuxc_cli("cache", "ls", "--json").stdout)["entries"] == []


def test_warm_cli_build_never_imports_onnx_or_the_plugins(make_project, cache_dir: Path, tmp_path: Path) -> None:
    """`gpuxc compile` with every target cached restores before importing anything heavy (jinja2 included)."""
    project = make_project(models.mlp())
    build(project, tmp_path / "a")
    probe = (
        "import sys\n"
        "from gpuxc.cli import main\n"
        "sys.argv = ['gpuxc', 'compile', sys.argv[1], '-t', 'cpu', '-o', sys.argv[2]]\n"
        "code = main()\n"
        "heavy = ('onnx', 'onnxruntime', 'numpy', 'jinja2', 'gpuxc_cpu', 'gpuxc.build.pipeline')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print('HEAVY', heavy, code)\n"
    )
    proc = run_cmd([sys.executable, "-c", probe, str(project), str(tmp_path / "b")],
                   env={"GPUXC_NO_CACHE": "", "GPUXC_CACHE_DIR": str(cache_dir)})  # fmt: skip
    assert "cache hit" in proc.stderr, proc.stderr
    assert "HEAVY [] 0" in proc.stdout, proc.stdout + proc.stderr
    assert tree(tmp_path / "a" / "demo-1.0.0-cpu") == tree(tmp_path / "b" / "demo-1.0.0-cpu")
