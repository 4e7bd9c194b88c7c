"""``gpuxc verify BUNDLE --against MODEL.onnx``: a bundle against a model on fresh or given inputs.

Runs the bundle's artifact through its target's ``execute`` and the model in ONNX Runtime,
sample by sample, and judges every output by the bundle's own tolerance with the sample loop
compile-time verification uses (gpuxc/build/verify.py): the worst value of each metric over all
samples is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gpuxc.build.verify import compare_samples
from gpuxc.bundle.manifest import read_manifest
from gpuxc.errors import BundleError, ConfigError, TargetUnavailable
from gpuxc.plugin import get_registry
from gpuxc.project.isolation import load_model, run_onnxruntime
from gpuxc.project.reference import generate, index_bounds
from gpuxc.targets import Artifact

# Fresh samples use seeds past the reference's (build.seed) so they are new data.
FRESH_SEED_BASE = 1_000_003


def load_input_samples(path: Path, names: list[str], ranks: dict[str, int]) -> list[dict[str, np.ndarray]]:
    """An .npz of inputs: arrays named like the inputs, optionally with a leading sample axis."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read inputs ({exc})") from None
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ConfigError(f"{path}: no array named '{missing[0]}' (has: {', '.join(arrays) or 'none'})")
    batched = all(arrays[n].ndim == ranks[n] + 1 for n in names if ranks.get(n) is not None)
    if not batched:
        return [{n: arrays[n] for n in names}]
    count = min(arrays[n].shape[0] for n in names)
    # np.asarray: a scalar input's sample (silero-vad's `sr`) must stay a 0-d array, not a NumPy
    # scalar, which ONNX Runtime refuses ("Unable to handle object of type numpy.int64").
    return [{n: np.asarray(arrays[n][i]) for n in names} for i in range(count)]


def verify_against(bundle: Path, model_path: Path, inputs: Path | None = None, samples: int = 4) -> dict[str, Any]:
    manifest = read_manifest(bundle)
    registry = get_registry()
    target = registry.target(manifest.target)()
    reason = target.why_unverifiable()
    if reason is not None:
        raise TargetUnavailable(f"cannot run a {manifest.target} bundle on this host: {reason}",
                                hint=f"run 'python {bundle} verify' on the device")  # fmt: skip
    model = load_model(model_path)
    sig = model.signature
    names = [t.name for t in manifest.inputs]
    if sorted(t.name for t in sig.inputs) != sorted(names):
        raise BundleError(
            f"{model_path} takes inputs {[t.name for t in sig.inputs]}, the bundle takes {names}: not the same model"
        )
    if inputs is not None:
        ranks = {t.name: len(t.shape) for t in manifest.inputs if t.shape is not None}
        batch = load_input_samples(inputs, names, ranks)
    else:
        bounds = index_bounds(model.proto)
        batch = [generate(sig, manifest.reference.shapes, FRESH_SEED_BASE + i, bounds) for i in range(max(1, samples))]
    artifact = Artifact(entry=manifest.artifact.entry, format=manifest.artifact.format,
                        settings=manifest.artifact.settings)  # fmt: skip
    tolerance = manifest.verification.tolerance
    class_outputs = {o.name for o in manifest.outputs if o.labels}
    pairs = ((run_onnxruntime(model_path, feeds), target.execute(bundle, artifact, feeds)) for feeds in batch)
    report = compare_samples(pairs, tolerance, class_outputs)
    return {
        "status": report["status"],
        "samples": len(batch),
        "inputs": str(inputs) if inputs else "generated",
        "tolerance": tolerance,
        "outputs": report["outputs"],
        "failures": report["failures"],
        "target": manifest.target,
        "runtime": target.verification_runtime(),
    }
