"""Pinned requirement lines for bundles, taken from what this build host runs.

A bundle is verified with the exact runtime versions gpuxc used at compile
time, so its requirements.txt pins those versions.
"""

from __future__ import annotations

import importlib.metadata

# Used when a serving dependency is not installed on the build host (gpuxc without [serve]):
# the oldest versions the generated server is written against.
FALLBACK_FLOORS = {"fastapi": ">=0.110", "uvicorn": ">=0.29", "prometheus-client": ">=0.20",
                   "pillow": ">=10", "tokenizers": ">=0.15", "python-multipart": ">=0.0.9",
                   "pysimdjson": ">=6.0", "orjson": ">=3.9", "httptools": ">=0.6"}  # fmt: skip


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned(dists: list[str], marker: str | None = None) -> list[str]:
    lines = []
    for dist in dists:
        version = version_of(dist)
        spec = f"=={version}" if version else FALLBACK_FLOORS.get(dist, "")
        lines.append(f"{dist}{spec}" + (f"; {marker}" if marker else ""))
    return lines


# pysimdjson and orjson: JSON tensors decoded and encoded in C (runner/jsontensors.py; optional there).
# httptools: uvicorn parses HTTP in C when it is installed, not with h11 in Python (a 786 KB request
# body on a model of tens of ms: about 2/3 of in-process throughput with h11, over 80% with httptools).
SERVE_DISTS = ["fastapi", "uvicorn", "prometheus-client", "pysimdjson", "orjson", "httptools"]
# Only where the bundle's preprocessing (manifest ``preprocessing.kind``) needs them: the runner
# decodes images with Pillow and tokenises text with tokenizers; its server reads multipart
# uploads (an image file, a text field) with python-multipart, through Starlette's form parser.
PREPROCESSING_DISTS = {"image": ["pillow"], "text": ["tokenizers"]}
UPLOAD_DISTS = ["python-multipart"]


def preprocessing_requirements(kind: str | None) -> list[str]:
    """What running a bundle with this preprocessing (``"image"``, ``"text"``, None) needs beside its runtime."""
    return pinned(PREPROCESSING_DISTS.get(kind or "", []))


def serve_requirements(kind: str | None) -> list[str]:
    """What ``python <bundle> serve`` needs: the server, and the upload parser with preprocessing."""
    return pinned(SERVE_DISTS + (UPLOAD_DISTS if kind else []))
