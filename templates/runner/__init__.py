"""The runner of a gpuxc bundle (no gpuxc import; reads gpux-bundle.json at run time).

    import sys; sys.path.insert(0, "path/to/bundle")
    import runner
    rt = runner.load()
    outputs = rt.infer({"input": array})
"""

from typing import Any

from runner.api import BUNDLE_DIR, BundleError, GPUXRuntime, InferenceTimeout, InputError, load, read_manifest

# The same runner files serve every bundle: what differs per bundle comes from its manifest,
# read when first asked for.
_FROM_MANIFEST = {"GPUXC_VERSION": "gpuxc_version", "TARGET": "target"}


def __getattr__(name: str) -> Any:
    if name not in _FROM_MANIFEST:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = read_manifest(BUNDLE_DIR)[_FROM_MANIFEST[name]]
    globals()[name] = value
    return value


__all__ = ["GPUXRuntime", "load", "InputError", "BundleError", "InferenceTimeout", "GPUXC_VERSION", "TARGET"]
