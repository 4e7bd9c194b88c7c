"""The bundle runner's sources: where they are, which files a bundle gets, and loading one into gpuxc.

The runner (``templates/runner/*.py``) is plain Python copied into every bundle. gpuxc uses
two of its modules itself, ``compare`` (output metrics) and ``layout`` (bundle paths), so that
the compiler and every bundle share one implementation. They import only NumPy and the standard
library and never ``runner.*``, so each file loads on its own, under a private module name: gpuxc
has no ``runner`` package, and a user's own ``runner`` package on ``sys.path`` is never touched.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from gpuxc.errors import GpuxcError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the installed gpuxc package
RUNNER_SOURCE_DIR = "runner"  # under template_root(): the runner package copied into bundles

# Files rendered per build (the only ones with per-build values): template -> path in the bundle.
RENDERED_FILES = {
    "runner/README.md.j2": "README.md",
    "runner/requirements.txt.j2": "requirements.txt",
    "runner/Dockerfile.j2": "Dockerfile",
}


def template_root() -> Path:
    """Templates ship in the wheel as ``gpuxc/_templates``; an editable install uses ``templates/``."""
    shipped = PACKAGE_DIR / "_templates"
    if shipped.is_dir():
        return shipped
    repo = PACKAGE_DIR.parent / "templates"
    if repo.is_dir():
        return repo
    raise GpuxcError(f"gpuxc installation is incomplete: no templates in {shipped} or {repo}")


def runner_source(name: str) -> Path:
    """The source file of the runner module ``name`` (``runner/<name>.py`` in a bundle)."""
    return template_root() / RUNNER_SOURCE_DIR / f"{name}.py"


@functools.cache
def runner_module(name: str) -> ModuleType:
    """The runner module ``name``, loaded once from its source file."""
    path = runner_source(name)
    if not path.is_file():
        raise GpuxcError(f"gpuxc installation is incomplete: no {path}")
    return load_file_module(f"_gpuxc_runner_{name}", path)


def load_file_module(module_name: str, path: Path) -> ModuleType:
    """The Python file ``path`` executed as module ``module_name``, without importing the package
    around it; registered in ``sys.modules`` as an import would (dataclasses look it up there) and
    removed again if executing it fails."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise GpuxcError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def find_source(rel: str, extra_dirs: tuple[Path, ...] = ()) -> Path:
    """The file ``rel`` of the first template folder holding it: a target's ``template_dir``
    (``extra_dirs``) before gpuxc's own, as the Jinja loader searches them."""
    for folder in (*extra_dirs, template_root()):
        path = folder / rel
        if path.is_file():
            return path
    raise GpuxcError(f"internal: no template file {rel} in {', '.join(str(d) for d in (*extra_dirs, template_root()))}")


def runner_files(adapter: str, extra_dirs: tuple[Path, ...] = ()) -> dict[str, Path]:
    """The runner copied into a bundle: source file by path in the bundle. Every
    ``templates/runner/*.py`` (``__main__.py`` at the bundle root, the rest in ``runner/``) and
    the target's adapter as ``runner/runtime.py``; a target's ``template_dir`` is searched first."""
    layout = runner_module("layout")
    files = {}
    for source in sorted((template_root() / RUNNER_SOURCE_DIR).glob("*.py")):
        rel = layout.MAIN if source.name == layout.MAIN else f"{layout.RUNNER_DIR}/{source.name}"
        files[rel] = find_source(f"{RUNNER_SOURCE_DIR}/{source.name}", extra_dirs)
    files[layout.RUNNER_RUNTIME] = find_source(adapter, extra_dirs)
    return files


def variant_module(target: str) -> str:
    """The runner module of fallback target ``target``'s adapter (``runner/runtime_<target>.py``; a
    ``-`` in a target name becomes ``_``: the runner imports only identifier-like module names)."""
    return f"runtime_{target.replace('-', '_')}"


def variant_adapter_files(adapters: dict[str, tuple[str, tuple[Path, ...]]]) -> dict[str, Path]:
    """A multi-variant bundle's fallback adapters: source file by path in the bundle. ``adapters``
    maps each fallback target to its adapter template and its ``template_dir`` (searched first)."""
    layout = runner_module("layout")
    return {f"{layout.RUNNER_DIR}/{variant_module(target)}.py": find_source(adapter, extra_dirs)
            for target, (adapter, extra_dirs) in adapters.items()}  # fmt: skip
