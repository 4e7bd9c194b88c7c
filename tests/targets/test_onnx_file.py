"""The shared base of the ONNX-file targets (gpuxc.targets.onnx_file): saving model/model.onnx,
listing what was written, and executing it on ONNX Runtime, as cpu, cuda, directml and tensorrt do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures import models
from gpuxc.errors import CompileError
from gpuxc.ort_session import run_onnxruntime
from gpuxc.targets import Artifact, CompileContext, TargetOptions
from gpuxc.targets.onnx_file import ONNX_ENTRY, OnnxFileTarget


class PlainOptions(TargetOptions):
    pass


class Plain(OnnxFileTarget[PlainOptions]):
    name = "plain"
    Options = PlainOptions

    def compile(self, model, ctx: CompileContext[PlainOptions]) -> Artifact:
        files = self.save_onnx(model, ctx)
        return Artifact(entry=files[0], format="onnx", files=files)


def context(bundle: Path) -> CompileContext[PlainOptions]:
    # save_onnx reads neither the config nor the signature.
    return CompileContext(None, None, PlainOptions(), bundle, bundle / "work")


def test_save_lists_the_files_it_wrote_and_execute_runs_them(tmp_path: Path) -> None:
    source = models.mlp()
    artifact = Plain().compile(source, context(tmp_path))
    assert artifact.entry == ONNX_ENTRY == "model/model.onnx"
    assert artifact.files == [ONNX_ENTRY]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == artifact.files
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    expected = run_onnxruntime(source.SerializeToString(), {"x": x}, providers=["CPUExecutionProvider"])
    actual = Plain().execute(tmp_path, artifact, {"x": x})
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name])


def test_external_data_files_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def save_with_data(model, path: Path) -> list[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model.SerializeToString())
        (path.parent / "model.data").write_bytes(b"")
        return ["model.data"]

    monkeypatch.setattr("gpuxc.targets.onnx_file.save_model", save_with_data)
    assert Plain().save_onnx(models.mlp(), context(tmp_path)) == ["model/model.onnx", "model/model.data"]


def test_a_model_that_cannot_be_written_is_a_compile_error_naming_the_target(tmp_path: Path) -> None:
    (tmp_path / "model").write_text("a file where the model folder should be", encoding="utf-8")
    with pytest.raises(CompileError, match="^plain: cannot write the model"):
        Plain().save_onnx(models.mlp(), context(tmp_path))


def test_execute_uses_the_targets_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    class Listed(Plain):
        def execute_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def fake_run(model: Path, inputs: dict, providers: list[str]) -> dict:
        seen.append(providers)
        return {}

    monkeypatch.setattr("gpuxc.ort_session.run_onnxruntime", fake_run)
    Listed().execute(tmp_path, Artifact(entry=ONNX_ENTRY, format="onnx"), {})
    assert seen == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
