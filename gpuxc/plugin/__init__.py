"""gpuxc's plugin system: hook specifications and the registry of targets and passes."""

from gpuxc.plugin.manager import Registry, get_registry, hookimpl

__all__ = ["Registry", "get_registry", "hookimpl"]
