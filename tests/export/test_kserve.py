"""``gpuxc export kserve``: the InferenceService YAML round-trips through the kserve SDK's typed models
(and the kubernetes client's for the containers), names the v2 protocol, and carries the probes,
resources and replicas from the bundle. Nothing here talks to a cluster: none exists on this machine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.cli import app
from gpuxc.errors import ExitCode

kserve = pytest.importorskip("kserve")  # the dev extra installs it; a missing SDK must not fail collection
from kubernetes import client as k8s  # noqa: E402  (installed with kserve)


def gpuxc(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


class _ApiClient(kserve.ApiClient):  # type: ignore[misc]
    """kserve's deserializer, handing the kubernetes types (V1Container, V1ObjectMeta...) to the
    kubernetes client's own: each SDK resolves only its own model names."""

    def _ApiClient__deserialize(self, data: Any, klass: Any) -> Any:  # noqa: N802  (the mangled name kserve calls)
        if isinstance(klass, str) and hasattr(k8s, klass) and not hasattr(kserve.models, klass):
            return k8s.ApiClient()._ApiClient__deserialize(data, klass)
        return super()._ApiClient__deserialize(data, klass)


def load(path: Path) -> tuple[dict[str, Any], Any]:
    """The YAML as data, and deserialized into V1beta1InferenceService."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))

    class Response:
        def __init__(self) -> None:
            self.data = json.dumps(data)

    service = _ApiClient().deserialize(Response(), "V1beta1InferenceService")
    assert isinstance(service, kserve.V1beta1InferenceService)
    # Every key survived the typed models: one the models do not know would be dropped here.
    assert kserve.ApiClient().sanitize_for_serialization(service) == data
    return data, service


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kserve")
    project = root / "p"
    project.mkdir()
    models.save(models.mlp(), project / "model.onnx")
    (project / "gpux.yml").write_text(
        "name: Tiny_MLP\nversion: 2.1.0\nmodel:\n  source: ./model.onnx\nruntime:\n  gpu:\n    memory: 1GB\n"
        "serving:\n  port: 9001\n  max_workers: 2\n  max_concurrency: 8\n", encoding="utf-8")  # fmt: skip
    [result] = compile_project(project, ["cpu"], root / "dist", use_cache=False)
    return result.path


def retargeted(bundle: Path, folder: Path, target: str) -> Path:
    """A copy of the bundle whose manifest names another target: export reads only the manifest."""
    copy = folder / f"{bundle.name}-{target}"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "gpux-bundle.json").read_text(encoding="utf-8"))
    manifest["target"] = target
    (copy / "gpux-bundle.json").write_text(json.dumps(manifest), encoding="utf-8")
    return copy


def test_the_bundle_image_predictor_speaks_v2_with_probes_resources_and_scaling(bundle: Path, tmp_path: Path) -> None:
    result = gpuxc("export", "kserve", bundle, "-o", tmp_path / "ks", "--max-replicas", "5", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["files"] == ["inferenceservice.yaml"]
    data, service = load(tmp_path / "ks" / "inferenceservice.yaml")
    assert data["apiVersion"] == "serving.kserve.io/v1beta1" and data["kind"] == "InferenceService"
    assert service.metadata.name == "tiny-mlp"
    predictor = service.spec.predictor
    assert (predictor.min_replicas, predictor.max_replicas) == (1, 5)
    # What one replica admits: max_concurrency per worker times the workers.
    assert (predictor.scale_metric, predictor.scale_target, predictor.container_concurrency) == ("concurrency", 16, 16)
    [container] = predictor.containers
    assert isinstance(container, k8s.V1Container)
    assert container.image == "tiny_mlp-cpu:2.1.0"
    assert container.args == ["serve", "--host", "0.0.0.0", "--port", "9001"]
    assert [p.container_port for p in container.ports] == [9001]
    assert [(e.name, e.value) for e in container.env] == [("PROTOCOL", "v2")]
    ready = container.readiness_probe.http_get
    assert (ready.path, ready.port) == ("/v2/health/ready", 9001)
    assert container.liveness_probe.http_get.path == "/v2/health/live"
    startup = container.startup_probe
    assert startup.http_get.path == "/v2/health/live" and startup.period_seconds * startup.failure_threshold >= 600
    # 1 GB budget (953.7 MiB) + 512 MiB for the runtime; a CPU per worker; no GPU for a cpu bundle.
    assert container.resources.requests == {"cpu": "2", "memory": "1466Mi"}
    assert container.resources.limits == {"memory": "1466Mi"}


def test_gpu_bundles_ask_for_a_gpu_and_image_overrides(bundle: Path, tmp_path: Path) -> None:
    trt = retargeted(bundle, tmp_path, "tensorrt")
    result = gpuxc("export", "kserve", trt, "-o", tmp_path / "ks", "--image", "registry.example:5000/team/m:7")
    assert result.exit_code == 0, result.stderr
    assert "nvidia.com/gpu" in result.stderr and "not applied to a cluster" in result.stderr
    _, service = load(tmp_path / "ks" / "inferenceservice.yaml")
    [container] = service.spec.predictor.containers
    assert container.image == "registry.example:5000/team/m:7"
    assert container.resources.limits["nvidia.com/gpu"] == container.resources.requests["nvidia.com/gpu"] == "1"


FORMATS = [("cpu", "onnx"), ("openvino", "triton"), ("tensorrt", "tensorrt")]


@pytest.mark.parametrize(("target", "model_format"), FORMATS)
def test_triton_predictor_reads_the_exported_repository(bundle: Path, tmp_path: Path, target: str,
                                                       model_format: str) -> None:  # fmt: skip
    source = bundle if target == "cpu" else retargeted(bundle, tmp_path, target)
    result = gpuxc("export", "kserve", source, "-o", tmp_path / "ks", "--triton", "s3://models/repo")
    assert result.exit_code == 0, result.stderr
    data, service = load(tmp_path / "ks" / "inferenceservice.yaml")
    model = service.spec.predictor.model
    assert isinstance(model, kserve.V1beta1ModelSpec)
    assert (model.model_format.name, model.runtime, model.storage_uri) == (model_format, "kserve-tritonserver",
                                                                           "s3://models/repo")  # fmt: skip
    assert data["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    assert service.spec.predictor.containers is None and service.spec.predictor.container_concurrency is None
    assert model.resources.requests["cpu"] == "2"


@pytest.mark.parametrize("target", ["coreml", "web"])
def test_bundles_kserve_cannot_run_are_refused_naming_what_works(bundle: Path, tmp_path: Path, target: str) -> None:
    for extra in ([], ["--triton", "s3://models/repo"]):
        result = gpuxc("export", "kserve", retargeted(bundle, tmp_path / "-".join([target, *extra[:1]]), target),
                       "-o", tmp_path / "ks", *extra)  # fmt: skip
        assert result.exit_code == ExitCode.EXPORT, result.output
        assert f"a {target} bundle cannot run" in result.stderr and "cpu, openvino" in result.stderr
        assert not (tmp_path / "ks").exists()


def test_bad_options_are_one_line_errors(bundle: Path, tmp_path: Path) -> None:
    for args, words in ((["--triton", "models/repo"], "not a storage URI"),
                        (["--image", "bad image"], "not a container image"),
                        (["--image", "x:1", "--triton", "s3://a/b"], "exclude each other"),
                        (["--min-replicas", "3", "--max-replicas", "2"], "replicas")):  # fmt: skip
        result = gpuxc("export", "kserve", bundle, "-o", tmp_path / "ks", *args)
        assert result.exit_code == ExitCode.EXPORT and words in result.stderr, (args, result.output)
        assert "Traceback" not in result.output
