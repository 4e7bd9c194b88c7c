"""Timing an artifact as its bundle runs it: through the runner's own runtime adapter.

``--optimize auto`` keeps the candidate that times fastest, so the time it measures must be the time
the shipped runner delivers: the same adapter code (``templates/<runtime>/runtime.py``, loaded from
its file like gpuxc loads the runner's ``compare``), the same session settings (threads, execution
mode, hints, the artifact's recorded settings) and the same run path (watchdog, output copies). A
timer built on a bare session measured a bf16 OpenVINO variant 3.8x faster than ONNX Runtime at
compile time and 1.6x in the shipped bundle (issue 13).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from gpuxc.bundle.runner_source import find_source, load_file_module

if TYPE_CHECKING:
    import numpy as np

# The variant setting holding the runtime settings --optimize auto chose (or a policy replays):
# ``Target.compile`` copies it into the artifact's settings.
RUNTIME_SETTINGS = "runtime"
# Never while timing: a cache folder would be written into the candidate's bundle, and profiling
# slows every run down.
_NOT_WHILE_TIMING = ("cache_dir", "enable_profiling")
# Long enough never to fire while timing; the watchdog still arms as it does in the bundle.
_TIMING_TIMEOUT_S = 3600.0


@functools.cache
def adapter_module(adapter: str, extra_dirs: tuple[Path, ...] = ()) -> ModuleType:
    """The runtime adapter template ``adapter`` (e.g. ``"onnxruntime/runtime.py"``), loaded once from
    its file under a private module name (a bundle imports it as ``runner.runtime``)."""
    return load_file_module("_gpuxc_adapter_" + re.sub(r"\W", "_", adapter), find_source(adapter, extra_dirs))


def open_adapter(adapter: str, model_path: Path, settings: dict[str, Any], device: str,
                 extra_dirs: tuple[Path, ...] = ()) -> Any:  # fmt: skip
    """The bundle runner's ``Adapter`` on ``model_path`` with ``settings`` (the artifact's), on ``device``
    (a provider or device name the adapter knows: ``"cpu"``, ``"CPU"``)."""
    module = adapter_module(adapter, extra_dirs)
    kept = {k: v for k, v in settings.items() if k not in _NOT_WHILE_TIMING and v is not None}
    return module.Adapter(model_path, kept, device, [], strict=True)


def output_names(adapter: Any) -> list[str]:
    """Every output of the opened model, as the runner asks for them (the manifest lists them all)."""
    session = getattr(adapter, "session", None)
    if session is not None:  # ONNX Runtime
        return [o.name for o in session.get_outputs()]
    return [port.get_any_name() for port in adapter.compiled.outputs]  # OpenVINO


def adapter_timer(adapter: str, model_path: Path, settings: dict[str, Any], device: str,
                  extra_dirs: tuple[Path, ...] = ()) -> Callable[[dict[str, np.ndarray]], Any]:  # fmt: skip
    """A function running the artifact once through the runner's adapter, as ``runtime.infer`` does
    with inputs already checked (what ``Target.timer`` returns)."""
    opened = open_adapter(adapter, model_path, settings, device, extra_dirs)
    names = output_names(opened)
    return lambda feeds: opened.run(feeds, names, _TIMING_TIMEOUT_S)
