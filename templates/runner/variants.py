"""Which of the bundle's variants runs here: the first whose runtime imports, loads, and (under
the self-check policy) passes its self-check.

A bundle compiled with ``--fallback`` carries an ordered list of variants in its manifest
(``variants``: a TensorRT engine, then the same graph for ONNX Runtime CUDA, then CPU), each
with its artifact, its adapter module (``runner/runtime.py``, ``runner/runtime_<target>.py``) and
its compile-time verification. A bundle without fallbacks has one variant: the manifest's
top-level target, artifact, runtime and verification. Every variant skipped is recorded with the
reason (runtime missing, failed to load, self-check failed), for /info, the log and the error
when none is left.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runner.selfcheck import first_line

# A variant's adapter module, from the manifest: a checked identifier before it reaches importlib.
_MODULE_RE = re.compile(r"^runtime(_[a-z0-9_]{1,40})?$")


class Adapter(Protocol):
    """What every target's runner/runtime*.py offers (templates/<runtime>/runtime.py)."""

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], timeout: float) -> dict[str, Any]: ...

    def provider_info(self) -> dict[str, Any]: ...

    def available_providers(self) -> list[str]: ...

    def close(self) -> None: ...


class NoVariantError(RuntimeError):
    """No variant of the bundle can run here; the message names each and why."""

    def __init__(self, message: str, skipped: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.skipped = skipped


@dataclass
class Chosen:
    """The variant that runs, its adapter and settings, its self-check (None: not run) and those skipped."""

    variant: dict[str, Any]
    adapter: Adapter
    settings: dict[str, Any]
    self_check: dict[str, Any] | None
    skipped: list[dict[str, Any]] = field(default_factory=list)


def manifest_variants(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The bundle's variants in order; a bundle without ``variants`` has its top-level one."""
    listed = manifest.get("variants") or []
    if listed:
        return list(listed)
    return [{
        "target": manifest["target"],
        "module": "runtime",
        "artifact": manifest["artifact"],
        "runtime": manifest["runtime"],
        "verification": manifest["verification"],
        "precision": manifest.get("build", {}).get("precision"),
        "variant": manifest.get("build", {}).get("variant"),
    }]  # fmt: skip


def variant_settings(variant: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The adapter's settings: the runtime's, then the artifact's (what the build chose), then the caller's."""
    merged = dict(variant["runtime"].get("settings", {}))
    merged.update(variant["artifact"].get("settings", {}))
    merged.update(overrides)
    return merged


def choose(
    bundle_dir: Path,
    variants: list[dict[str, Any]],
    overrides: dict[str, Any],
    provider: str | None,
    check: Callable[[dict[str, Any], Adapter, dict[str, Any]], dict[str, Any] | None],
) -> Chosen:
    """Open each variant in order and keep the first that loads and whose ``check`` (the
    self-check, or None when the policy skips it) passes. ``provider`` (an explicit --provider)
    must be honoured: a variant whose adapter refuses it is skipped."""
    skipped: list[dict[str, Any]] = []
    for variant in variants:
        target = str(variant.get("target"))
        settings = variant_settings(variant, overrides)
        try:
            adapter = _open(bundle_dir, variant, settings, provider)
        except _Skip as skip:
            skipped.append({"target": target, "stage": skip.stage, "reason": skip.reason})
            continue
        result = check(variant, adapter, settings)
        if result is not None and result["status"] != "passed":
            if result["status"] != "timeout":  # a timed-out run may still be using the adapter
                adapter.close()
            reason = f"self-check {result['status']}: " + "; ".join(result.get("failures", [])[:3])
            skipped.append({"target": target, "stage": "self-check", "reason": reason, "self_check": result})
            continue
        return Chosen(variant, adapter, settings, result, skipped)
    raise NoVariantError(describe_failure(skipped), skipped)


def skipped_line(skipped: dict[str, Any]) -> str:
    """How a skipped variant is said on stderr and in the server's log."""
    return f"gpuxc: variant {skipped['target']} skipped: {skipped['reason']}"


def describe_failure(skipped: list[dict[str, Any]]) -> str:
    if len(skipped) == 1:  # a bundle without fallbacks: the reason alone, as before variants existed
        return str(skipped[0]["reason"])
    return "no variant can run here: " + "; ".join(f"{s['target']}: {s['reason']}" for s in skipped)


class _Skip(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.reason = stage, reason


def _open(bundle_dir: Path, variant: dict[str, Any], settings: dict[str, Any], provider: str | None) -> Adapter:
    module_name = str(variant.get("module", "runtime"))
    if not _MODULE_RE.match(module_name):
        raise _Skip("load", f"adapter module '{module_name[:60]}' is not a runner module name")
    model_path = bundle_dir / variant["artifact"]["entry"]
    if not model_path.exists():
        raise _Skip("load", f"{variant['artifact']['entry']}: model artifact missing from the bundle")
    try:
        module = importlib.import_module(f"runner.{module_name}")
    except ImportError as exc:
        # The usual case on a host without the variant's runtime (no tensorrt, no coremltools).
        raise _Skip("runtime", f"runtime missing: {first_line(exc)}") from None
    except Exception as exc:  # a runtime that is installed but broken (a missing shared library)
        raise _Skip("runtime", f"runtime failed to import: {first_line(exc)}") from None
    preferred = provider or settings.get("backend", "auto")
    try:
        adapter: Adapter = module.Adapter(model_path, settings, preferred, variant["runtime"].get("providers", []),
                                          strict=bool(provider))  # fmt: skip
    except ImportError as exc:  # adapters that import their runtime when opened (tensorrt, cuda.bindings)
        raise _Skip("runtime", f"runtime missing: {first_line(exc)}") from None
    except Exception as exc:  # the runtime refused the artifact (another GPU, another engine version)
        raise _Skip("load", f"cannot load the model: {first_line(exc)}") from None
    return adapter
