"""Bundle format v1: the manifest ``gpux-bundle.json`` (documented in docs/bundle-format.md).

The JSON Schema in docs/bundle-format.schema.json is generated from these
models (``python -m gpuxc.bundle.manifest``); a test fails when the two drift apart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python

from gpuxc.bundle.layout import MANIFEST_NAME
from gpuxc.passes import PassRecord
from gpuxc.project.model import ModelSignature
from gpuxc.project.preprocessing import ImagePreprocessing, TextPreprocessing
from gpuxc.project.upgrade import ModelUpgrade

FORMAT: Final = "gpux-bundle"
FORMAT_VERSION: Final = 1


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_M):
    path: str  # POSIX path relative to the bundle root
    size: int
    sha256: str


class TensorSpecOut(_M):
    """A bundle input or output as the runner validates it."""

    name: str
    dtype: str
    shape: list[int | str | None] | None
    description: str | None = None
    labels: list[str] | None = None
    top_k: int | None = None  # with labels: the runner returns this many ranked {label, score} (default 5)
    max_length: int | None = None


class SourceInfo(_M):
    file: str  # file name only: no host paths in manifests
    sha256: str
    size_bytes: int
    # Set when the model compiled was the source made current (old opset upgraded, IR 3
    # initializer-inputs dropped): gpuxc/project/upgrade.py. Verification is still against the source.
    upgrade: ModelUpgrade | None = None


class BuildInfo(_M):
    precision: str  # of the shipped variant
    optimization_level: str | None
    target_options: dict[str, Any]
    passes: list[PassRecord]  # of the shipped variant, in order: replayable
    optimize: Literal["fixed", "auto"] = "fixed"
    variant: str = "fp32"  # the shipped variant
    # Under auto: every candidate with status, reason, latency_ms, speedup_vs_fp32, min_cosine, max_abs,
    # size_bytes, memory_bytes and the passes applied.
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    memory: dict[str, int] | None = None  # estimate: weights_bytes, activations_bytes (upper bound), total_bytes
    # The shipped variant's settings (hint, keep_float, runtime...): with passes, what a policy replays.
    variant_settings: dict[str, Any] = Field(default_factory=dict)
    calibration_sha256: str | None = None  # of build.calibration.data, as the cache key has it (policies check it)


class ArtifactInfo(_M):
    entry: str
    format: str
    settings: dict[str, Any]  # read by the runner's adapter: threads, hints, runtime settings auto chose
    # CPU capabilities the artifact was specialised for on the build host (OpenVINO's names: "BF16",
    # "FP16", "INT8"), from settings["requires_isa"]; the runner warns on a CPU without them.
    requires_isa: list[str] = Field(default_factory=list)


class RuntimeInfo(_M):
    adapter: str  # template the runner's runtime.py was rendered from
    requirements: list[str]
    providers: list[str]
    python_requires: str
    settings: dict[str, Any]  # backend, memory limit, timeout, profiling: read by the runner


class ServingInfo(_M):
    host: str
    port: int
    timeout: float
    max_workers: int
    max_concurrency: int = 64
    max_body_bytes: int = 64 * 1024 * 1024
    max_batch_size: int = 1  # > 1: the server batches requests along the first dim
    max_queue_delay: float = 0.002
    self_check: Literal["always", "unverified", "off"] = "unverified"  # the runner's start-up self-check policy


class ReferenceInfo(_M):
    inputs: str
    outputs: str
    origin: Literal["generated", "calibration", "sentences"]  # sentences: text preprocessing without calibration data
    seed: int
    shapes: dict[str, list[int]]
    # What ran the source model to compute the outputs: onnxruntime, else openvino, else onnx.reference
    # (gpuxc/project/reference_runtime.py), and why each runtime before it could not.
    runtime: str = "onnxruntime"
    fallbacks: list[str] = Field(default_factory=list)
    cross_check: str | None = None  # an OpenVINO reference checked against onnx.reference: the outcome
    # origin "calibration": true when the reference (and lossy variants' extra samples) are among the
    # samples the quantizers calibrate on, because the data held no more than build.calibration.samples.
    calibration_overlap: bool = False


class Verification(_M):
    status: Literal["passed", "failed", "unverified"]
    reason: str | None = None
    runtime: str | None = None  # what executed the artifact, e.g. "onnxruntime 1.31.1 CPUExecutionProvider"
    tolerance: dict[str, float]
    samples: int = 1  # inputs compared: the reference, plus more for lossy variants (worst metrics kept)
    outputs: dict[str, Any] = Field(default_factory=dict)
    failures: list[str] = Field(default_factory=list)


class VariantInfo(_M):
    """One variant of a multi-variant bundle (build.fallback): the runner tries them in order."""

    target: str
    module: str  # the runner module of its adapter: "runtime" for variants[0], "runtime_<target>" after
    artifact: ArtifactInfo  # entry and files relative to the bundle root (fallbacks: under variants/<target>/)
    runtime: RuntimeInfo  # its own requirements (requirements.txt holds the union)
    verification: Verification
    precision: str
    variant: str  # build variant name (fp32, int8-dynamic, ...)
    note: str | None = None  # e.g. why a fallback was built at fp32 rather than build.precision


class HostInfo(_M):
    platform: str
    machine: str
    python: str
    libraries: dict[str, str]
    # The build host's CPU extensions (avx2, avx512f, avx512_vnni, avx512_bf16, amx_bf16, amx_int8,
    # asimddp, ...; gpuxc/host.py), None where the platform does not say; and OpenVINO's
    # OPTIMIZATION_CAPABILITIES of it when OpenVINO is installed.
    isa: list[str] | None = None
    openvino_capabilities: list[str] | None = None


class Manifest(_M):
    format: Literal["gpux-bundle"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    gpuxc_version: str
    name: str
    version: str
    description: str | None
    target: str
    source: SourceInfo
    config: dict[str, Any]  # canonical gpux.yml, defaults filled in
    signature: ModelSignature  # of the source model
    inputs: list[TensorSpecOut]
    outputs: list[TensorSpecOut]
    # gpux.yml's preprocessing settled against the model: images compiled into the graph, text
    # tokenised by the runner (gpuxc/project/preprocessing.py; docs/preprocessing.md).
    preprocessing: ImagePreprocessing | TextPreprocessing | None = Field(default=None, discriminator="kind")
    metadata: dict[str, Any]
    build: BuildInfo
    artifact: ArtifactInfo
    runtime: RuntimeInfo
    serving: ServingInfo
    reference: ReferenceInfo
    verification: Verification
    # Empty for a single-variant bundle; with build.fallback, variants[0] is the primary (the
    # top-level target/artifact/runtime/verification), then the fallbacks in order.
    variants: list[VariantInfo] = Field(default_factory=list)
    host: HostInfo
    files: list[FileEntry]

    def to_json(self) -> str:
        # Python mode first: pydantic's JSON mode turns inf/nan inside Any-typed fields (the
        # verification metrics) into null before _finite could record them.
        data = to_jsonable_python(_finite(self.model_dump(mode="python")))
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def read_manifest(bundle: Path) -> Manifest:
    from gpuxc.errors import BundleError, first_line

    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle}: not a gpuxc bundle (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {data.get('format_version')!r}; this gpuxc reads {FORMAT_VERSION}"
        )
    try:
        return Manifest.model_validate(data)
    except Exception as exc:
        raise BundleError(f"{path}: malformed manifest: {first_line(exc)}") from None


def _finite(value: Any) -> Any:
    # JSON has no Infinity/NaN; a max error of inf is recorded as the string "inf".
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gpuxc bundle manifest (gpux-bundle.json), format version 1"
    return schema


if __name__ == "__main__":  # regenerate docs/bundle-format.schema.json
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
