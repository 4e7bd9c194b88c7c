"""``gpuxc export triton BUNDLE -o REPO``: a Triton model repository holding the bundle's artifact.

REPO/<name>/config.pbtxt (gpuxc/export/triton_config.py) and REPO/<name>/1/<the artifact>:
ONNX artifacts (cpu, cuda, directml) on Triton's onnxruntime backend, OpenVINO IR on its openvino
backend, tensorrt bundles either as the ONNX they carry with ONNX Runtime's TensorRT accelerator
(the engine is deferred: built on the device) or, when the bundle holds an engine built ahead of
time, as a ``tensorrt_plan``. The copied model is run here on the bundle's reference inputs with
ONNX Runtime / OpenVINO and compared with its reference outputs, so the repository holds the
artifact that was verified. Triton itself is not run here (it cannot be installed from PyPI).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuxc.bundle.manifest import ArtifactInfo, Manifest, TensorSpecOut
from gpuxc.errors import ExportError
from gpuxc.export import ExportResult, write_export
from gpuxc.export.triton_config import TRT_PRECISION, Plan, batched, build_config, to_text

WORKS = "Triton runs ONNX, OpenVINO and TensorRT artifacts: compile with -t cpu, openvino, cuda or tensorrt"
ONNX_TARGETS = {"cpu": False, "cuda": True, "directml": True}  # target -> runs on a GPU instance
VERSION = "1"


@dataclass
class Chosen:
    """The bundle variant exported: its target, artifact and verification tolerance."""

    target: str
    artifact: ArtifactInfo
    tolerance: dict[str, float]
    note: str | None = None


def export(bundle: Path, out: Path, manifest: Manifest) -> ExportResult:
    """Write the model repository ``out`` for ``bundle``; ExportError when Triton cannot run any variant."""
    chosen = choose_variant(manifest)
    name = model_name(manifest.name)
    plan, notes = _plan(bundle, manifest, chosen, name)
    if chosen.note:
        notes.insert(0, chosen.note)
    notes.extend(_shape_notes(manifest))

    def write(stage: Path) -> list[str]:
        model_dir = stage / name
        version_dir = model_dir / VERSION
        version_dir.mkdir(parents=True)
        files = [f"{name}/{VERSION}/{rel}" for rel in _copy_artifact(bundle, chosen, version_dir)]
        for output in manifest.outputs:
            if output.name in plan.labels:
                (model_dir / plan.labels[output.name]).write_text("\n".join(output.labels or []) + "\n", "utf-8")
                files.append(f"{name}/{plan.labels[output.name]}")
        config = build_config(plan, manifest.inputs, manifest.outputs, manifest.serving)
        (model_dir / "config.pbtxt").write_text(to_text(config), encoding="utf-8")
        files.append(f"{name}/config.pbtxt")
        notes.append(_check(bundle, manifest, chosen, version_dir))
        return files

    files = write_export(out, "triton", bundle, write)
    notes.append("Triton itself was not run here: config.pbtxt was built as Triton's own ModelConfig message "
                 "(tritonclient's schema) and the model file checked with ONNX Runtime / OpenVINO")  # fmt: skip
    return ExportResult(engine="triton", path=out, files=files, notes=notes)


def model_name(name: str) -> str:
    """A Triton model name (its folder name) from the bundle's name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".")
    return safe or "model"


def choose_variant(manifest: Manifest) -> Chosen:
    """The bundle's first variant Triton can run (the only one for a single-variant bundle)."""
    if not manifest.variants:
        candidates = [(manifest.target, manifest.artifact, manifest.verification.tolerance)]
    else:
        candidates = [(v.target, v.artifact, v.verification.tolerance) for v in manifest.variants]
    for index, (target, artifact, tolerance) in enumerate(candidates):
        if _runnable(target, artifact):
            note = None
            if manifest.variants:
                skipped = [t for t, _, _ in candidates[:index]]
                note = (f"exported variant '{target}' of the fallback bundle"
                        + (f" (Triton cannot run {', '.join(skipped)})" if skipped else ""))  # fmt: skip
            return Chosen(target, artifact, tolerance, note)
    targets = ", ".join(t for t, _, _ in candidates)
    raise ExportError(f"a {targets} bundle cannot be exported to Triton: {WORKS}")


def _runnable(target: str, artifact: ArtifactInfo) -> bool:
    if target in ONNX_TARGETS:
        return artifact.format == "onnx"  # a cpu bundle's .ort file is not what Triton's backend loads
    return target in ("openvino", "tensorrt")


def _aot_engine(bundle: Path, chosen: Chosen) -> Path | None:
    """A TensorRT engine built ahead of time (artifact settings engine: aot), else None."""
    if chosen.target != "tensorrt" or chosen.artifact.settings.get("engine") != "aot":
        return None
    engine = (bundle / chosen.artifact.entry).parent / "model.engine"
    return engine if engine.is_file() else None


def _plan(bundle: Path, manifest: Manifest, chosen: Chosen, name: str) -> tuple[Plan, list[str]]:
    settings = chosen.artifact.settings
    notes: list[str] = []
    plan = Plan(name=name, labels=_label_files(manifest.outputs))
    if chosen.target == "openvino":
        plan.backend = "openvino"
        plan.parameters = _openvino_parameters(settings, notes)
    elif _aot_engine(bundle, chosen) is not None:
        plan.platform, plan.gpu = "tensorrt_plan", True
        plan.max_batch_cap = _profile_max_batch(settings)
        notes.append(f"the TensorRT engine built ahead of time for {settings.get('gpu', 'its GPU')} "
                     f"(TensorRT {settings.get('tensorrt_version', '?')}) is model.plan: it runs only on that GPU "
                     "and TensorRT version")  # fmt: skip
    elif chosen.target == "tensorrt":
        plan.backend, plan.gpu = "onnxruntime", True
        precision = str(settings.get("precision", "fp32"))
        plan.tensorrt = {"precision_mode": TRT_PRECISION.get(precision, "FP32")}
        if settings.get("workspace_bytes"):
            plan.tensorrt["max_workspace_size_bytes"] = str(int(settings["workspace_bytes"]))
        notes.append(f"the TensorRT engine is deferred: Triton's onnxruntime backend builds it on the GPU at "
                     f"model load (TensorRT accelerator, precision_mode {plan.tensorrt['precision_mode']}) "
                     "from the prepared ONNX the bundle carries")  # fmt: skip
    else:
        plan.backend, plan.gpu = "onnxruntime", ONNX_TARGETS[chosen.target]
        plan.parameters = _onnxruntime_parameters(settings)
        if chosen.target == "directml":
            notes.append("a directml bundle: Triton's onnxruntime backend runs it with CUDA (KIND_GPU), not DirectML")
    if manifest.preprocessing is not None and manifest.preprocessing.kind == "text":
        notes.append("text preprocessing: Triton takes the token tensors "
                     f"({', '.join(t.name for t in manifest.inputs)}); tokenise on the client with the "
                     "bundle's preprocessing/tokenizer.json")  # fmt: skip
    return plan, notes


def _openvino_parameters(settings: dict[str, Any], notes: list[str]) -> dict[str, str]:
    """Triton's openvino backend parameters from the artifact's settings, read as templates/openvino/runtime.py does."""
    params = {"PERFORMANCE_HINT": "THROUGHPUT" if settings.get("performance_hint") == "throughput" else "LATENCY"}
    if settings.get("intra_op_threads"):
        params["INFERENCE_NUM_THREADS"] = str(int(settings["intra_op_threads"]))
    if settings.get("num_streams"):
        params["NUM_STREAMS"] = str(int(settings["num_streams"]))
    hint = settings.get("inference_precision") or "f32"
    if hint == "bf16":
        params["HINT_BF16"] = "YES"
    else:
        # The backend can ask for bf16 but sets no other precision: OpenVINO's CPU default (bf16 where
        # the CPU has it) applies, which is not what the bundle verified.
        notes.append(f"openvino: the bundle was verified at inference precision {hint}; Triton's openvino backend "
                     "only offers HINT_BF16, so on a CPU with bf16 (AVX512_BF16/AMX) it may infer in bf16")  # fmt: skip
    return params


def _onnxruntime_parameters(settings: dict[str, Any]) -> dict[str, str]:
    """Triton's onnxruntime backend session parameters from the artifact's runtime settings."""
    params: dict[str, str] = {}
    for ours, theirs in (("intra_op_threads", "intra_op_thread_count"), ("inter_op_threads", "inter_op_thread_count")):
        if settings.get(ours):
            params[theirs] = str(int(settings[ours]))
    if settings.get("execution_mode") == "parallel":
        params["execution_mode"] = "1"
    return params


def _profile_max_batch(settings: dict[str, Any]) -> int | None:
    """The largest batch every optimization profile of an engine allows."""
    highs = [shapes["max"][0] for shapes in (settings.get("profiles") or {}).values() if shapes.get("max")]
    return min(highs) if highs else None


def _label_files(outputs: list[TensorSpecOut]) -> dict[str, str]:
    files: dict[str, str] = {}
    for index, output in enumerate(outputs):
        if not output.labels:
            continue
        bad = next((label for label in output.labels if "\n" in label or "\r" in label), None)
        if bad is not None:
            raise ExportError(f"output '{output.name}': label {bad!r} holds a line break; Triton's label file "
                              "has one label per line")  # fmt: skip
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", output.name).strip(".") or "output"
        name = f"{stem}_labels.txt"
        files[output.name] = name if name not in files.values() else f"{stem}_{index}_labels.txt"
    return files


def _shape_notes(manifest: Manifest) -> list[str]:
    if batched(manifest.inputs, manifest.outputs):
        return []
    return [
        "no symbolic first dim shared by every input and output: max_batch_size 0 with full dims "
        "(Triton batches nothing, as the bundle's own server would not)"
    ]


def _copy_artifact(bundle: Path, chosen: Chosen, version_dir: Path) -> list[str]:
    """Copy the variant's model files into the version folder under Triton's default names."""
    entry = bundle / chosen.artifact.entry
    engine = _aot_engine(bundle, chosen)
    if engine is not None:
        shutil.copyfile(engine, version_dir / "model.plan")
        return ["model.plan"]
    if chosen.target == "openvino":
        shutil.copyfile(entry, version_dir / "model.xml")
        shutil.copyfile(entry.with_suffix(".bin"), version_dir / "model.bin")
        return ["model.bin", "model.xml"]
    import onnx

    from gpuxc.project.model_safety import check_external_data

    # External data files keep their names relative to the model (checked contained, as at compile).
    extra = check_external_data(onnx.load(str(entry), load_external_data=False), entry.parent)
    shutil.copyfile(entry, version_dir / "model.onnx")
    for rel in extra:
        (version_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry.parent / rel, version_dir / rel)
    return ["model.onnx", *extra]


def _check(bundle: Path, manifest: Manifest, chosen: Chosen, version_dir: Path) -> str:
    """Run the repository's model file on the reference inputs; ExportError when it disagrees."""
    if _aot_engine(bundle, chosen) is not None:
        return "model.plan was not run here (a TensorRT engine needs its GPU); the bundle's ONNX was verified"
    import numpy as np

    from gpuxc.bundle.compare import compare
    from gpuxc.plugin import get_registry
    from gpuxc.targets import Artifact

    target = get_registry().target(chosen.target)()
    entry = "model.xml" if chosen.target == "openvino" else "model.onnx"
    artifact = Artifact(entry=entry, format=chosen.artifact.format, settings=chosen.artifact.settings)
    with np.load(bundle / manifest.reference.inputs, allow_pickle=False) as data:
        inputs = {k: data[k] for k in data.files}
    with np.load(bundle / manifest.reference.outputs, allow_pickle=False) as data:
        expected = {k: data[k] for k in data.files}
    try:
        actual = target.execute(version_dir, artifact, inputs)
    except Exception as exc:
        raise ExportError(f"{version_dir.name}/{entry}: does not run on the reference inputs ({exc})") from None
    report = compare(expected, actual, chosen.tolerance, {o.name for o in manifest.outputs if o.labels})
    if report["status"] != "passed":
        raise ExportError(f"{entry}: disagrees with the bundle's reference outputs: {report['failures'][0]}")
    runtime = "OpenVINO" if chosen.target == "openvino" else "ONNX Runtime CPU"
    return (
        f"checked {VERSION}/{entry} on {runtime}: matches the bundle's reference outputs "
        f"({', '.join(sorted(expected))}) within its tolerance"
    )
