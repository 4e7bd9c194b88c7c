from pathlib import Path

from gpuxc.build.pipeline import compile_project


def test_compile_mlp_passes(make_project, tmp_path: Path) -> None:
    project = make_project()
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    assert (result.path / "gpux-bundle.json").is_file()
