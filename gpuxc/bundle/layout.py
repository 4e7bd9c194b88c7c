"""Every path inside a bundle, in one place (docs/bundle-format.md describes the same layout).

The paths are defined once, in the runner's ``layout.py`` that every bundle carries; this module
re-exports them for gpuxc (the same file, loaded by ``gpuxc.bundle.runner_source``) and adds what
only the compiler needs. Paths are POSIX strings relative to the bundle root, as the manifest
records them; join them onto a bundle folder with ``bundle / layout.MODEL_DIR`` and the like.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner's file, as mypy sees it (mypy_path has templates/)
    from runner.layout import (
        MAIN,
        MANIFEST_NAME,
        MODEL_DIR,
        PREPROCESSING_DIR,
        REFERENCE_DIR,
        REFERENCE_INPUTS,
        REFERENCE_OUTPUTS,
        RUNNER_DIR,
        RUNNER_RUNTIME,
        TOKENIZER,
        VARIANTS_DIR,
        variant_dir,
    )
else:
    from gpuxc.bundle.runner_source import runner_module

    _runner_layout = runner_module("layout")
    MANIFEST_NAME = _runner_layout.MANIFEST_NAME
    MAIN = _runner_layout.MAIN
    MODEL_DIR = _runner_layout.MODEL_DIR
    REFERENCE_DIR = _runner_layout.REFERENCE_DIR
    REFERENCE_INPUTS = _runner_layout.REFERENCE_INPUTS
    REFERENCE_OUTPUTS = _runner_layout.REFERENCE_OUTPUTS
    RUNNER_DIR = _runner_layout.RUNNER_DIR
    RUNNER_RUNTIME = _runner_layout.RUNNER_RUNTIME
    PREPROCESSING_DIR = _runner_layout.PREPROCESSING_DIR
    TOKENIZER = _runner_layout.TOKENIZER
    VARIANTS_DIR = _runner_layout.VARIANTS_DIR
    variant_dir = _runner_layout.variant_dir

CANDIDATES_DIR = ".candidates"  # --optimize auto builds each variant here inside the staging folder

__all__ = [
    "CANDIDATES_DIR",
    "MAIN",
    "MANIFEST_NAME",
    "MODEL_DIR",
    "PREPROCESSING_DIR",
    "REFERENCE_DIR",
    "REFERENCE_INPUTS",
    "REFERENCE_OUTPUTS",
    "RUNNER_DIR",
    "RUNNER_RUNTIME",
    "TOKENIZER",
    "VARIANTS_DIR",
    "bundle_name",
    "variant_dir",
]


def bundle_name(name: str, version: str, target: str) -> str:
    """The bundle's folder name: ``<name>-<version>-<target>``."""
    return f"{name}-{version}-{target}"
