"""The build cache's key: the sha256 of a canonical JSON document (:func:`key_document`) of
everything that decides a bundle.

- gpuxc's version and a digest of its code, every plugin package's code and the templates
  (an edited template or pass is a new key, even in an editable install);
- the canonical config after CLI overrides (the same dict the manifest records), the target
  and whether the build is reproducible (``--archive``);
- the model file's sha256, the calibration data's digest;
- the policy replayed (``compile --policy``), by its digest: a replay never restores a searched
  bundle, nor a search a replayed one;
- the host facts that change a result: OS, machine, Python, CPU model and flags (OpenVINO's
  precision hints and ``--optimize auto``'s timings depend on them) and the versions of every
  library a pass, target or the bundle's pinned requirements come from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuxc import __version__
from gpuxc.cache.store import CACHE_FORMAT
from gpuxc.digests import sha256_file, tree_digest

if TYPE_CHECKING:
    from gpuxc.project.config import GpuxConfig

# Libraries whose version can change what a build writes: passes and targets use them, and the
# bundle's requirements.txt pins the serving ones.
RESULT_LIBRARIES = (
    "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "protobuf", "onnxsim", "onnxslim",
    "onnxconverter-common", "openvino", "nncf", "coremltools", "tensorrt",
    "fastapi", "uvicorn", "prometheus-client", "jinja2", "pydantic", "pillow", "tokenizers", "python-multipart",
)  # fmt: skip


def _package_root(module_name: str) -> Path | None:
    spec = importlib.util.find_spec(module_name.split(".")[0])
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def code_digest(modules: Iterable[str], template_dirs: Iterable[Path]) -> dict[str, str]:
    """Digests of gpuxc's code, each plugin package and each template folder, by name."""
    out: dict[str, str] = {}
    for name in sorted({"gpuxc", *(m.split(".")[0] for m in modules)}):
        root = _package_root(name)
        if root is not None and root.is_dir():
            out[name] = tree_digest(root, (".py", ".j2", ".json"))
        elif root is not None:  # a single-module plugin
            out[name] = sha256_file(Path(importlib.util.find_spec(name).origin))  # type: ignore[union-attr,arg-type]
    for folder in sorted(set(template_dirs)):
        if folder.is_dir():
            out[f"templates:{folder.name}"] = tree_digest(folder)
    return out


def cpu_facts() -> dict[str, str]:
    """The CPU's model and feature flags (x86 ``flags``, Arm ``Features``), where the OS says."""
    facts = {"processor": platform.processor()}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return facts
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "flags", "features", "cpu part") and key not in facts:
            facts[key] = " ".join(sorted(value.split())) if key in ("flags", "features") else value.strip()
    return facts


def host_facts() -> dict[str, Any]:
    """What of this machine can change a build's result (see the module doc)."""
    from gpuxc.bundle.requirements import version_of

    return {
        "system": platform.system().lower(),
        "machine": platform.machine(),
        "python": ".".join(map(str, sys.version_info[:3])),
        "cpu": cpu_facts(),
        "libraries": {d: version_of(d) for d in RESULT_LIBRARIES},
    }


def calibration_digest(config: GpuxConfig) -> str | None:
    """The digest of build.calibration.data (a folder's tree digest, a file's sha256); None without
    data. OSError when it cannot be read. Also recorded in the manifest, and checked by a policy."""
    cal = config.build.calibration
    if cal is None or cal.data is None:
        return None
    data = (config.project_dir / cal.data).resolve()
    return tree_digest(data) if data.is_dir() else sha256_file(data)


def key_document(
    *,
    config: dict[str, Any],
    target: str,
    reproducible: bool,
    model_sha256: str,
    calibration_digest: str | None,
    code: dict[str, str],
    host: dict[str, Any],
    policy: str | None = None,
    tokenizer_sha256: str | None = None,
) -> dict[str, Any]:
    return {
        "tokenizer": tokenizer_sha256,
        "cache_format": CACHE_FORMAT,
        "gpuxc": __version__,
        "code": code,
        "target": target,
        "reproducible": reproducible,
        "config": config,
        "model_sha256": model_sha256,
        "calibration": calibration_digest,
        "host": host,
        "policy": policy,
    }


def key_of(document: dict[str, Any]) -> str:
    """The key: sha256 of the document as canonical JSON (sorted keys, no spaces, ASCII)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
