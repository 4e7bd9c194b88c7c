"""``gpuxc export kserve``: a KServe InferenceService (v2 protocol) for a bundle (docs/deploy.md).

Two predictors. By default the bundle's own container image (its Dockerfile) runs as a custom
predictor: the runner's server speaks v2 on ``serving.port``, answers /v2/health/ready 503 until its
start-up self-check passed (the readiness probe), and exits when the model cannot load. With
``triton=URI`` the predictor is KServe's ``kserve-tritonserver`` runtime reading the repository
``gpuxc export triton`` wrote, stored at URI.

Every object is one of the ``kserve`` SDK's typed models or the ``kubernetes`` client's, so a
misspelt field fails here rather than in the cluster. Serialised with ``kserve.ApiClient``: the
kubernetes client (37+, pydantic models) serialises kserve's older generated models field by field in
snake_case with nulls, which the API server would not read. Nothing here talks to a cluster.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from gpuxc.bundle.manifest import Manifest
from gpuxc.errors import ExportError
from gpuxc.export import ExportResult, write_export
from gpuxc.sizes import parse_size

FILE = "inferenceservice.yaml"
# Targets whose bundle image runs in a Linux container; cuda/tensorrt also need an NVIDIA GPU.
CONTAINER_TARGETS = ("cpu", "openvino", "cuda", "tensorrt")
GPU_TARGETS = ("cuda", "tensorrt")
# KServe modelFormat per target for kserve-tritonserver. Its stock ClusterServingRuntime lists onnx
# and tensorrt but not openvino: an OpenVINO repository is served as the generic "triton" format
# (Triton picks the backend from config.pbtxt). No version: KServe then matches on the name only.
TRITON_FORMATS = {"cpu": "onnx", "openvino": "triton", "cuda": "onnx", "tensorrt": "tensorrt"}
TRITON_RUNTIME = "kserve-tritonserver"
# KServe's name for the predictor's container (constants.InferenceServiceContainerName).
CONTAINER_NAME = "kserve-container"
# Host memory beyond the model: Python, the runtime's libraries, the server and request buffers.
# An allowance (not measured per bundle): raise it with the pod's resources if a replica is OOM-killed.
RUNTIME_OVERHEAD = 512 * 2**20
# Start-up may compile or self-check for minutes (TensorRT engines, OpenVINO on first load):
# liveness is not checked until the server answers at all, for up to STARTUP_SECONDS.
STARTUP_SECONDS = 600
_PERIOD = 5
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_IMAGE = re.compile(r"^[a-z0-9][A-Za-z0-9._/:@-]{0,254}$")  # a docker reference: registry/name[:tag][@digest]
_STORAGE_URI = re.compile(r"^[a-z][a-z0-9+.-]*://[^\s]+$")


def export(bundle: Path, out: Path, manifest: Manifest, *, image: str | None = None, triton: str | None = None,
           min_replicas: int = 1, max_replicas: int = 4) -> ExportResult:  # fmt: skip
    """Write ``out/inferenceservice.yaml`` for ``bundle``; see the module doc for the two predictors."""
    try:
        import kserve  # noqa: F401  (the typed models; imports its model server too, hence only here)
    except ImportError:
        raise ExportError("gpuxc export kserve needs the kserve SDK: pip install 'gpuxc[export]'") from None
    if triton is not None and image is not None:
        raise ExportError("--image and --triton exclude each other: the Triton predictor runs KServe's Triton image")
    _check_target(manifest, triton is not None)
    if not 0 <= min_replicas <= max_replicas or max_replicas < 1:
        raise ExportError(f"replicas: need 0 <= --min-replicas ({min_replicas}) <= --max-replicas ({max_replicas}), "
                          "and --max-replicas >= 1")  # fmt: skip
    name = service_name(manifest)
    notes = ["kserve: generated and checked against the kserve SDK's models; not applied to a cluster here"]
    if triton is not None:
        if not _STORAGE_URI.match(triton):
            raise ExportError(f"--triton {triton!r}: not a storage URI; give where the repository written by "
                              "`gpuxc export triton` is stored (s3://, gs://, pvc://, https://...)")  # fmt: skip
        predictor = _triton_predictor(manifest, triton, min_replicas, max_replicas)
        notes.append(f"kserve: predictor {TRITON_RUNTIME} (modelFormat {TRITON_FORMATS[manifest.target]}) "
                     f"reading {triton}; v2 URLs name the Triton model's folder")  # fmt: skip
    else:
        image = image or default_image(manifest)
        if not _IMAGE.match(image):
            raise ExportError(f"--image {image!r}: not a container image reference (name[:tag])")
        predictor = _container_predictor(manifest, image, min_replicas, max_replicas)
        notes.append(f"kserve: predictor image {image}: build and push it from the bundle "
                     f"(docker build -t {image} {bundle})")  # fmt: skip
    if manifest.target in GPU_TARGETS:
        notes.append("kserve: 1 nvidia.com/gpu per replica; runtime.gpu.memory is no Kubernetes resource, "
                     "pick a node whose GPU has it")  # fmt: skip
    text = render(inference_service(manifest, name, predictor))

    def write(stage: Path) -> list[str]:
        (stage / FILE).write_text(text, encoding="utf-8")
        return [FILE]

    files = write_export(out, "kserve", bundle, write)
    return ExportResult("kserve", out, files, notes)


def _check_target(manifest: Manifest, triton: bool) -> None:
    works = tuple(TRITON_FORMATS) if triton else CONTAINER_TARGETS
    if manifest.target not in works:
        how = "KServe's Triton runtime" if triton else "KServe's Linux containers"
        raise ExportError(f"a {manifest.target} bundle cannot run on {how}; export a bundle compiled for "
                          f"{', '.join(works)} (gpuxc compile -t {works[0]})")  # fmt: skip


def service_name(manifest: Manifest) -> str:
    """The InferenceService's name: the bundle's name as a DNS label (KServe names hosts after it)."""
    name = re.sub(r"[^a-z0-9-]+", "-", manifest.name.lower()).strip("-")
    if not _DNS_LABEL.match(name):
        raise ExportError(f"bundle name {manifest.name!r} does not make a Kubernetes name "
                          "(a lowercase letter, then up to 62 letters, digits or '-')")  # fmt: skip
    return name


def default_image(manifest: Manifest) -> str:
    """``<name>-<target>:<version>``, as the bundle's Dockerfile suggests, made a valid reference."""
    version = re.sub(r"[^A-Za-z0-9_.-]", "-", manifest.version)
    return f"{manifest.name.lower()}-{manifest.target}:{version}"


def _resources(manifest: Manifest) -> Any:
    """Host memory for the model (runtime.gpu.memory, else the compile's estimate) plus the runtime's;
    a CPU per worker; one GPU for cuda/tensorrt. Requests equal limits for memory: a replica that
    outgrows its estimate is restarted rather than starving its neighbours."""
    from kubernetes.client import V1ResourceRequirements

    budget = manifest.runtime.settings.get("gpu_memory")
    model = parse_size(budget) if isinstance(budget, str) else int((manifest.build.memory or {}).get("total_bytes", 0))
    memory = f"{math.ceil((model + RUNTIME_OVERHEAD) / 2**20)}Mi"
    requests = {"cpu": str(manifest.serving.max_workers), "memory": memory}
    limits = {"memory": memory}
    if manifest.target in GPU_TARGETS:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = "1"
    return V1ResourceRequirements(requests=requests, limits=limits)


def _probe(path: str, port: int, failures: int) -> Any:
    from kubernetes.client import V1HTTPGetAction, V1Probe

    return V1Probe(http_get=V1HTTPGetAction(path=path, port=port), period_seconds=_PERIOD,
                   timeout_seconds=2, failure_threshold=failures)  # fmt: skip


def _scaling(manifest: Manifest, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    """Knative scales on requests in flight; the target is what one replica admits
    (serving.max_concurrency per worker, times the workers): past it the runner answers 503, so
    containerConcurrency holds extra requests in Knative's queue instead. Knative scales out at 70%
    of the target by default, before a replica refuses."""
    capacity = manifest.serving.max_concurrency * manifest.serving.max_workers
    return {"min_replicas": min_replicas, "max_replicas": max_replicas, "scale_metric": "concurrency",
            "scale_target": capacity, "container_concurrency": capacity}  # fmt: skip


def _container_predictor(manifest: Manifest, image: str, min_replicas: int, max_replicas: int) -> Any:
    from kserve import V1beta1PredictorSpec
    from kubernetes.client import V1Container, V1ContainerPort, V1EnvVar

    port = manifest.serving.port
    container = V1Container(
        name=CONTAINER_NAME, image=image,
        # The image's own CMD, spelled out: listen on every interface inside the pod.
        command=["python", "."], args=["serve", "--host", "0.0.0.0", "--port", str(port)],
        ports=[V1ContainerPort(container_port=port, name="http1", protocol="TCP")],
        # KServe reads a custom container's protocol from $PROTOCOL (constants.CustomSpecProtocolEnvVarKey).
        env=[V1EnvVar(name="PROTOCOL", value="v2")],
        startup_probe=_probe("/v2/health/live", port, STARTUP_SECONDS // _PERIOD),
        liveness_probe=_probe("/v2/health/live", port, 3),
        readiness_probe=_probe("/v2/health/ready", port, 3),  # 503 until the self-check passed
        resources=_resources(manifest),
    )  # fmt: skip
    return V1beta1PredictorSpec(containers=[container], **_scaling(manifest, min_replicas, max_replicas))


def _triton_predictor(manifest: Manifest, storage_uri: str, min_replicas: int, max_replicas: int) -> Any:
    from kserve import V1beta1ModelFormat, V1beta1ModelSpec, V1beta1PredictorSpec

    model = V1beta1ModelSpec(name=CONTAINER_NAME, model_format=V1beta1ModelFormat(name=TRITON_FORMATS[manifest.target]),
                             runtime=TRITON_RUNTIME, storage_uri=storage_uri, protocol_version="v2",
                             resources=_resources(manifest))  # fmt: skip
    # Triton queues and batches requests itself: no hard per-replica limit in front of it.
    scaling = {**_scaling(manifest, min_replicas, max_replicas), "container_concurrency": None}
    return V1beta1PredictorSpec(model=model, **scaling)


def inference_service(manifest: Manifest, name: str, predictor: Any) -> Any:
    from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec
    from kubernetes.client import V1ObjectMeta

    labels = {"app.kubernetes.io/name": name,
              "app.kubernetes.io/version": re.sub(r"[^A-Za-z0-9_.-]", "-", manifest.version)[:63]}  # fmt: skip
    return V1beta1InferenceService(api_version="serving.kserve.io/v1beta1", kind="InferenceService",
                                   metadata=V1ObjectMeta(name=name, labels=labels),
                                   spec=V1beta1InferenceServiceSpec(predictor=predictor))  # fmt: skip


def render(service: Any) -> str:
    """The manifest as YAML, in the API's own field names (camelCase), without empty fields."""
    from kserve import ApiClient

    data = ApiClient().sanitize_for_serialization(service)
    return "# KServe InferenceService written by `gpuxc export kserve`; apply with kubectl apply -f\n" + \
        yaml.safe_dump(data, sort_keys=False)  # fmt: skip
