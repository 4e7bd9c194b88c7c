"""Every path inside a bundle, in one place (docs/bundle-format.md describes the same layout).

Paths are POSIX strings relative to the bundle root, as the manifest records them; join them
onto a bundle folder with ``bundle / layout.MODEL_DIR`` and the like.
"""

from __future__ import annotations

MANIFEST_NAME = "gpux-bundle.json"
MAIN = "__main__.py"
MODEL_DIR = "model"  # the artifact(s) a target compiled
REFERENCE_DIR = "reference"
REFERENCE_INPUTS = f"{REFERENCE_DIR}/inputs.npz"  # the reference inputs, as verified at compile time
REFERENCE_OUTPUTS = f"{REFERENCE_DIR}/outputs.npz"  # ONNX Runtime's outputs on the source model
RUNNER_DIR = "runner"  # the Python package that runs the bundle
RUNNER_RUNTIME = f"{RUNNER_DIR}/runtime.py"  # the target's runtime adapter
CANDIDATES_DIR = ".candidates"  # --optimize auto builds each variant here inside the staging folder


def bundle_name(name: str, version: str, target: str) -> str:
    """The bundle's folder name: ``<name>-<version>-<target>``."""
    return f"{name}-{version}-{target}"
