"""Loading plugins and keeping the registry of targets and passes.

Plugins load only from installed entry points (group ``gpuxc``): nothing is
imported from the project, model or bundle folder. With
``GPUXC_DISABLE_PLUGIN_AUTOLOAD=1`` only the built-in plugins load.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from gpuxc.errors import PluginError
from gpuxc.plugin import spec

if TYPE_CHECKING:
    from gpuxc.passes import Pass
    from gpuxc.targets import Target

hookimpl = pluggy.HookimplMarker(spec.PROJECT)

ENTRY_POINT_GROUP = "gpuxc"
DISABLE_AUTOLOAD_ENV = "GPUXC_DISABLE_PLUGIN_AUTOLOAD"
# Built-in plugins, by the entry-point name pyproject.toml gives them.
BUILTINS = {
    "cpu": "gpuxc_cpu",
    "passes": "gpuxc_passes",
    "openvino": "gpuxc_openvino",
    "ort-gpu": "gpuxc_ort_gpu",
    "tensorrt": "gpuxc_tensorrt",
    "coreml": "gpuxc_coreml",
}
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


@dataclass
class Registry:
    """Targets and passes by name, each with the plugin that registered it."""

    targets: dict[str, type[Target[Any]]] = field(default_factory=dict)
    passes: dict[str, type[Pass[Any]]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # "target:cpu" -> plugin name
    plugins: list[str] = field(default_factory=list)

    def target(self, name: str) -> type[Target[Any]]:
        from gpuxc.errors import TargetUnavailable, did_you_mean

        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise TargetUnavailable(
                f"unknown target '{name}'{did_you_mean(name, self.targets)}; known targets: {known}"
            ) from None

    def pass_(self, name: str) -> type[Pass[Any]]:
        from gpuxc.errors import did_you_mean

        try:
            return self.passes[name]
        except KeyError:
            raise PluginError(f"unknown pass '{name}'{did_you_mean(name, self.passes)}") from None


def _register_into(registry: Registry, kind: str, plugin: str) -> Any:
    from gpuxc.passes import Pass
    from gpuxc.targets import Target

    base: type[Target[Any]] | type[Pass[Any]] = Target if kind == "target" else Pass
    table: dict[str, Any] = registry.targets if kind == "target" else registry.passes

    def register(cls: type[Any]) -> None:
        if not isinstance(cls, type) or not issubclass(cls, base):
            raise PluginError(
                f"plugin '{plugin}' registered {cls!r} as a {kind}, but it is not a {base.__name__} subclass"
            )
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise PluginError(
                f"plugin '{plugin}': {kind} class {cls.__name__} needs a 'name' of lowercase letters, "
                "digits, '-' or '_'"
            )
        if name in table:
            first = registry.origins[f"{kind}:{name}"]
            raise PluginError(f"{kind} '{name}' is registered twice: by plugin '{first}' and by plugin '{plugin}'")
        cls.validate_class()
        table[name] = cls
        registry.origins[f"{kind}:{name}"] = plugin

    return register


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def plugin_module_names() -> list[str]:
    """The modules :func:`_load_modules` would import, found without importing any of them
    (the build cache hashes their code before deciding whether a build is needed)."""
    names = set(BUILTINS.values())
    if os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes"):
        names.update(ep.module for ep in _entry_points())
    return sorted(names)


def _load_modules() -> list[tuple[str, ModuleType]]:
    """Plugin modules by plugin name (the entry-point name).

    Two entry points with the same name but different modules are two plugins: a
    third-party entry point called ``cpu`` never silently replaces ``gpuxc_cpu`` (and if it
    registers a target ``cpu`` too, the registry reports the duplicate).
    """
    modules: dict[str, ModuleType] = {}

    def add(name: str, module: ModuleType) -> None:
        if any(m is module for m in modules.values()):
            return  # the same module behind two entry points (e.g. editable + wheel metadata)
        modules[f"{name} ({module.__name__})" if name in modules else name] = module

    autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
    if autoload:
        for ep in _entry_points():
            try:
                loaded = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin '{ep.name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
                ) from None
            if not isinstance(loaded, ModuleType):
                raise PluginError(f"plugin '{ep.name}' ({ep.value}) must point at a module")
            add(ep.name, loaded)
    for name, module_name in BUILTINS.items():
        add(name, importlib.import_module(module_name))
    return sorted(modules.items())


def build_registry() -> Registry:
    """Load every plugin and collect what they register (errors are ``PluginError``)."""
    pm = pluggy.PluginManager(spec.PROJECT)
    pm.add_hookspecs(spec)
    registry = Registry()
    for name, module in _load_modules():
        try:
            pm.register(module, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin '{name}' could not be registered: {exc}") from None
        registry.plugins.append(name)
    try:
        pm.check_pending()  # a misspelt hook name is a bug in the plugin, not silence
    except pluggy.PluginValidationError as exc:
        # PluginValidationError carries the plugin object, not its name.
        raise PluginError(f"plugin '{pm.get_name(exc.plugin) or exc.plugin}': {exc}") from None
    for kind, hook in (("target", pm.hook.gpuxc_register_targets), ("pass", pm.hook.gpuxc_register_passes)):
        for impl in hook.get_hookimpls():
            try:
                impl.function(register=_register_into(registry, kind, impl.plugin_name))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin '{impl.plugin_name}' failed registering {'passes' if kind == 'pass' else 'targets'}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
    return registry


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    return build_registry()
