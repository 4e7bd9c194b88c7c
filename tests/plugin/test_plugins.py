"""The plugin registry: built-ins, third-party entry points, and every way a plugin can be wrong."""

from __future__ import annotations

import ast
import itertools
import sys
import textwrap
from pathlib import Path

import pytest

from gpuxc.errors import PluginError, TargetUnavailable
from gpuxc.plugin import manager, spec
from gpuxc.plugin.manager import DISABLE_AUTOLOAD_ENV, build_registry, get_registry
from gpuxc.targets import Target

REPO = Path(__file__).resolve().parents[2]
_ids = itertools.count()

TARGET_PLUGIN = """
from gpuxc.plugin import hookimpl
from gpuxc.targets import Target


class FooTarget(Target):
    name = {target_name!r}


@hookimpl
def gpuxc_register_targets(register):
    register(FooTarget)
"""


def install_plugin(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    *,
    entry: str = "foo",
    value: str | None = None,
) -> str:
    """Simulate ``pip install thirdparty``: a dist-info with a ``gpuxc`` entry point and a module.

    Returns the module name (unique per call, so no test sees another's import).
    """
    module = f"foo_plugin_{next(_ids)}"
    site = tmp_path / f"site-{module}"
    dist_info = site / "thirdparty-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 0.1\n", encoding="utf-8")
    (dist_info / "entry_points.txt").write_text(f"[gpuxc]\n{entry} = {value or module}\n", encoding="utf-8")
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    return module


@pytest.fixture(autouse=True)
def _forget_plugin_modules() -> None:
    yield
    for name in [m for m in sys.modules if m.startswith("foo_plugin_")]:
        del sys.modules[name]


# -- built-ins -------------------------------------------------------------------------------


def test_builtin_targets_and_passes_are_registered() -> None:
    registry = get_registry()
    assert "cpu" in registry.targets
    assert {"ort-optimize", "fix-shapes"} <= set(registry.passes)
    assert registry.origins["target:cpu"] == "cpu"
    assert registry.origins["pass:ort-optimize"] == "passes"
    assert {"cpu", "passes"} <= set(registry.plugins)


def test_unknown_target_and_pass_names_suggest_the_closest(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = build_registry()
    with pytest.raises(TargetUnavailable, match="did you mean 'cpu'"):
        registry.target("cpuu")
    with pytest.raises(PluginError, match="did you mean 'fix-shapes'"):
        registry.pass_("fix-shape")


# -- third-party plugins ---------------------------------------------------------------------


def test_third_party_entry_point_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = install_plugin(tmp_path, monkeypatch, TARGET_PLUGIN.format(target_name="foo"))
    registry = build_registry()
    assert registry.targets["foo"].__module__ == module
    assert registry.origins["target:foo"] == "foo"
    assert "cpu" in registry.targets


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_disable_autoload_loads_only_builtins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    module = install_plugin(tmp_path, monkeypatch, TARGET_PLUGIN.format(target_name="foo"))
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, value)
    registry = build_registry()
    assert "foo" not in registry.targets
    assert module not in sys.modules  # not even imported
    assert "cpu" in registry.targets and "ort-optimize" in registry.passes
    assert sorted(registry.plugins) == sorted(manager.BUILTINS)


def test_duplicate_target_name_names_both_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, TARGET_PLUGIN.format(target_name="cpu"))
    with pytest.raises(PluginError) as info:
        build_registry()
    message = str(info.value)
    assert "target 'cpu' is registered twice" in message
    assert "plugin 'cpu'" in message and "plugin 'foo'" in message


def test_registering_a_non_target_class_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = """
    from gpuxc.plugin import hookimpl

    class NotATarget:
        name = "bar"

    @hookimpl
    def gpuxc_register_targets(register):
        register(NotATarget)
    """
    install_plugin(tmp_path, monkeypatch, source)
    with pytest.raises(PluginError, match="not a Target subclass") as info:
        build_registry()
    assert "plugin 'foo'" in str(info.value)


def test_registering_a_target_as_a_pass_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = """
    from gpuxc.plugin import hookimpl
    from gpuxc.targets import Target

    class Confused(Target):
        name = "confused"

    @hookimpl
    def gpuxc_register_passes(register):
        register(Confused)
    """
    install_plugin(tmp_path, monkeypatch, source)
    with pytest.raises(PluginError, match="not a Pass subclass"):
        build_registry()


@pytest.mark.parametrize("bad_name", ["Has Space", "UPPER", "", "x" * 41])
def test_target_names_must_be_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_name: str) -> None:
    install_plugin(tmp_path, monkeypatch, TARGET_PLUGIN.format(target_name=bad_name))
    with pytest.raises(PluginError, match="needs a 'name'"):
        build_registry()


def test_target_options_must_be_a_pydantic_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = """
    from gpuxc.plugin import hookimpl
    from gpuxc.targets import Target

    class BadOptions(Target):
        name = "bad-options"
        Options = dict

    @hookimpl
    def gpuxc_register_targets(register):
        register(BadOptions)
    """
    install_plugin(tmp_path, monkeypatch, source)
    with pytest.raises(PluginError, match="Options must be a pydantic model"):
        build_registry()


def test_plugin_whose_import_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "raise RuntimeError('boom at import')\n")
    with pytest.raises(PluginError) as info:
        build_registry()
    message = str(info.value)
    assert "plugin 'foo'" in message and "failed to load" in message
    assert "RuntimeError: boom at import" in message


def test_entry_point_to_a_missing_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "", value="no_such_module_anywhere")
    with pytest.raises(PluginError, match="ModuleNotFoundError"):
        build_registry()


def test_entry_point_must_name_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"foo_plugin_obj_{next(_ids)}"
    site = tmp_path / "site-obj"
    site.mkdir()
    (site / f"{module}.py").write_text("thing = object()\n", encoding="utf-8")
    dist_info = site / "thirdparty-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 0.1\n", encoding="utf-8")
    (dist_info / "entry_points.txt").write_text(f"[gpuxc]\nfoo = {module}:thing\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    try:
        with pytest.raises(PluginError, match="must point at a module"):
            build_registry()
    finally:
        sys.modules.pop(module, None)


def test_misspelt_hook_is_an_error_not_silence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = """
    from gpuxc.plugin import hookimpl
    from gpuxc.targets import Target

    class FooTarget(Target):
        name = "foo"

    @hookimpl
    def gpuxc_register_target(register):  # missing the final "s"
        register(FooTarget)
    """
    install_plugin(tmp_path, monkeypatch, source)
    with pytest.raises(PluginError) as info:
        build_registry()
    assert "plugin 'foo'" in str(info.value)
    assert "gpuxc_register_target" in str(info.value)


def test_hook_that_raises_is_a_plugin_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = """
    from gpuxc.plugin import hookimpl

    @hookimpl
    def gpuxc_register_passes(register):
        raise ValueError("broken plugin")
    """
    install_plugin(tmp_path, monkeypatch, source)
    with pytest.raises(PluginError, match="plugin 'foo' failed registering passes: ValueError: broken plugin"):
        build_registry()


def test_get_registry_is_cached_until_cleared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_registry()
    assert get_registry() is first
    install_plugin(tmp_path, monkeypatch, TARGET_PLUGIN.format(target_name="foo"))
    assert "foo" not in get_registry().targets
    get_registry.cache_clear()
    assert "foo" in get_registry().targets


def test_builtin_target_classes_are_targets() -> None:
    for cls in get_registry().targets.values():
        assert issubclass(cls, Target)


# -- docs ------------------------------------------------------------------------------------


def hookspec_names() -> list[str]:
    tree = ast.parse(Path(spec.__file__).read_text(encoding="utf-8"))
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "hookspec" for d in node.decorator_list)
    ]


def test_every_hookspec_is_documented_in_plugins_md() -> None:
    names = hookspec_names()
    assert names, "no hookspecs found in gpuxc/plugin/spec.py"
    doc = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    missing = [name for name in names if name not in doc]
    assert missing == [], f"hooks missing from docs/plugins.md: {missing}"


def test_third_party_entry_point_named_like_a_builtin_does_not_replace_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, TARGET_PLUGIN.format(target_name="shadow"), entry="cpu")
    registry = build_registry()
    # Both load: the built-in cpu target is still there, registered by gpuxc_cpu.
    assert {"cpu", "shadow"} <= set(registry.targets)
    assert registry.targets["cpu"].__module__.startswith("gpuxc_cpu")
