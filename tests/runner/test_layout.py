"""The runner's layout.py: every path inside a bundle, the same for gpuxc and the runner."""

from __future__ import annotations

from gpuxc.bundle import layout
from gpuxc.bundle.runner_source import runner_module


def test_gpuxc_bundle_paths_are_the_runner_layout() -> None:
    runner_layout = runner_module("layout")
    names = [n for n in vars(runner_layout) if n.isupper()]
    assert {"MANIFEST_NAME", "MODEL_DIR", "REFERENCE_INPUTS", "REFERENCE_OUTPUTS", "RUNNER_RUNTIME"} <= set(names)
    assert all(getattr(layout, n) == getattr(runner_layout, n) for n in names)


def test_paths_are_relative_posix_paths() -> None:
    runner_layout = runner_module("layout")
    for name in (n for n in vars(runner_layout) if n.isupper()):
        path = getattr(runner_layout, name)
        assert not path.startswith("/") and "\\" not in path and ".." not in path.split("/"), name
