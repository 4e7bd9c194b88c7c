"""Every path inside a bundle, in one place, for gpuxc and the bundle's runner alike.

Standard library only: the bundle writer copies this file verbatim into every bundle as
``runner/layout.py``, and gpuxc loads the same file (``gpuxc.bundle.layout`` re-exports it), so
the compiler that writes a bundle and the runner that reads it agree on every path.
docs/bundle-format.md describes the same layout.

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
PREPROCESSING_DIR = "preprocessing"  # files the runner's preprocessing reads (a tokenizer.json)
TOKENIZER = f"{PREPROCESSING_DIR}/tokenizer.json"
VARIANTS_DIR = "variants"  # a multi-variant bundle's fallback artifacts, one folder per target


def variant_dir(target: str) -> str:
    """The folder of fallback target ``target``'s artifact (what ``model/`` is to the primary)."""
    return f"{VARIANTS_DIR}/{target}"
