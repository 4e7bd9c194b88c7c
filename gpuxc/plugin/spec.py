"""Hook specifications of the ``gpuxc`` pluggy project.

A plugin is any module registered under the ``gpuxc`` entry-point group that
implements some of these hooks with ``@gpuxc.plugin.hookimpl``. Built-in targets
and passes (``gpuxc_cpu``, ``gpuxc_passes``) are plugins of exactly this kind.
Every hook is documented in docs/plugins.md; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "gpuxc"
hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def gpuxc_register_targets(register: Callable[[type[Any]], None]) -> None:
    """Register target classes: call ``register(MyTarget)`` once per class.

    :param register: takes a ``gpuxc.targets.Target`` subclass; the registry keys it by its
        ``name`` and rejects a name that another plugin already registered.
    """


@hookspec
def gpuxc_register_passes(register: Callable[[type[Any]], None]) -> None:
    """Register graph pass classes: call ``register(MyPass)`` once per class.

    :param register: takes a ``gpuxc.passes.Pass`` subclass, keyed by its ``name``.
    """
