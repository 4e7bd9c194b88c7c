"""gpuxc export ray: the files it writes, what it refuses, and the export served by a real local Ray cluster
(two replicas, Ray's batching, one replica killed mid-load: benchmarks/ray_failover.py)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from typer.testing import CliRunner

from benchmarks import ray_failover
from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.cli import app as cli
from gpuxc.errors import ExitCode, ExportError
from gpuxc.export import open_bundle
from gpuxc.export import ray as ray_export

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
# Ray's own modules use pydantic v1-style Field arguments on import: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, export): an MLP bundle with a batch dim, max_batch_size 4, exported for 2 replicas."""
    work = tmp_path_factory.mktemp("ray")
    out = ray_failover.export_mlp(work, models, compile_project, open_bundle, ray_export)
    return work / "dist" / next(p.name for p in (work / "dist").iterdir() if p.is_dir()), out


def test_writes_the_app_its_config_serve_yaml_and_the_bundle(exported: tuple[Path, Path]) -> None:
    bundle, out = exported
    manifest = open_bundle(bundle)
    # app.py is the template byte for byte: nothing about the model is written into code.
    assert (out / "app.py").read_bytes() == ray_export.app_template().read_bytes()
    assert (out / "bundle" / "gpux-bundle.json").read_bytes() == (bundle / "gpux-bundle.json").read_bytes()
    config = json.loads((out / "gpuxc-ray.json").read_text())
    assert config["batching"] == {"max_batch_size": 4, "batch_wait_timeout_s": 0.005}
    serve_yaml = yaml.safe_load((out / "serve.yaml").read_text())
    [application] = serve_yaml["applications"]
    assert (application["import_path"], application["route_prefix"]) == ("app:app", "/")
    assert "runtime_env" not in application  # a Serve config takes only remote URIs: --working-dir . names OUT
    [deployment] = application["deployments"]
    assert deployment == {"name": "bundle", **config["deployment"]}
    assert deployment["num_replicas"] == 2
    assert deployment["max_ongoing_requests"] == manifest.serving.max_concurrency
    assert deployment["health_check_period_s"] > 0


def test_sizing_follows_serving(exported: tuple[Path, Path]) -> None:
    manifest = open_bundle(exported[0])
    serving = manifest.serving.model_copy(update={"max_workers": 3, "max_concurrency": 40, "max_batch_size": 4})
    options = ray_export.deployment_options(manifest.model_copy(update={"serving": serving}))
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 10}
    assert "num_replicas" not in options
    single = manifest.serving.model_copy(update={"max_workers": 1, "max_batch_size": 1})
    unbatched = manifest.model_copy(update={"serving": single})
    assert ray_export.deployment_options(unbatched)["num_replicas"] == 1
    assert ray_export.batching(unbatched) is None


@pytest.mark.parametrize("target", ["cuda", "tensorrt"])
def test_gpu_bundles_ask_a_gpu_per_replica_and_the_proxy_stays_on_loopback(exported: tuple[Path, Path],
                                                                           target: str) -> None:  # fmt: skip
    manifest = open_bundle(exported[0]).model_copy(update={"target": target})
    assert ray_export.check_runnable(manifest) == [target]
    options = ray_export.deployment_options(manifest)
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    # serving.host (loopback by default), as `serve` binds: never every interface unasked.
    assert ray_export.serve_config(manifest, options)["http_options"]["host"] == "127.0.0.1"


@pytest.mark.parametrize("target", ["coreml", "web"])
def test_refuses_a_bundle_no_replica_can_run(exported: tuple[Path, Path], tmp_path: Path, target: str) -> None:
    bundle = exported[0]
    manifest = open_bundle(bundle).model_copy(update={"target": target})
    with pytest.raises(ExportError, match=f"a {target} bundle cannot run .* cpu, openvino"):
        ray_export.export(bundle, tmp_path / "out", manifest)
    assert not (tmp_path / "out").exists()


def test_an_unreachable_cluster_is_exit_17(exported: tuple[Path, Path], tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(cli, ["export", "ray", str(exported[0]), "-o", str(tmp_path / "out"), "--deploy",
                                      "--address", f"127.0.0.1:{port}"])  # fmt: skip
    assert result.exit_code == int(ExitCode.EXPORT) == 17
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers there" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_health_needs_a_loaded_runtime_whose_self_check_passed(exported: tuple[Path, Path]) -> None:
    module = ray_export.load_app_module(exported[1])
    try:
        # The method itself, on a stand-in replica (an instance of the ingress class is Ray's to make).
        check_health = module.GpuxcBundle.func_or_class.check_health

        class Runtime:  # the one method of GPUXRuntime that check_health reads
            def __init__(self, status: str) -> None:
                self.status = status

            def self_check_report(self) -> dict[str, Any]:
                return {"status": self.status}

        with pytest.raises(RuntimeError, match="not loaded"):
            check_health(SimpleNamespace())
        for status in ("failed", "timeout"):
            with pytest.raises(RuntimeError, match=status):
                check_health(SimpleNamespace(rt=Runtime(status)))
        for status in ("passed", "not needed", "off"):
            check_health(SimpleNamespace(rt=Runtime(status)))
    finally:
        sys.modules.pop("app", None)


@pytest.fixture(scope="module")
def served(exported: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray cluster started here (2 CPUs, no dashboard) with Serve's proxy on a free port, and
    the bundle deployed on it by ``gpuxc export ray --deploy --address`` in a process of its own that
    has exited by the time the tests run (so a replacement replica cannot lean on it): the proxy's URL."""
    port = ray_failover.free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        out = tmp_path_factory.mktemp("deploy") / "ray"
        done = subprocess.run([sys.executable, "-m", "gpuxc", "export", "ray", str(exported[0]), "-o", str(out),
                               "--replicas", "2", "--deploy", "--address", ray.get_runtime_context().gcs_address],
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert "ray: deployed application 'mlp'" in done.stderr
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()


def test_ray_serves_the_runner_routes_with_each_request_getting_its_own_rows(
        served: str, exported: tuple[Path, Path]) -> None:  # fmt: skip
    assert httpx.get(f"{served}/health", timeout=10).status_code == 200
    assert httpx.get(f"{served}/v2/health/ready", timeout=10).status_code == 200
    assert httpx.get(f"{served}/info", timeout=10).json()
    session = ort.InferenceSession(models.mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    xs = [np.random.default_rng(i).standard_normal((1 + i % 2, 8)).astype(np.float32) for i in range(16)]

    def infer(x: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        reply = httpx.post(f"{served}/v2/models/mlp/infer", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        [output] = reply.json()["outputs"]
        return np.asarray(output["data"], np.float32).reshape(output["shape"])

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # concurrent: Ray's batch queue stacks them
        results = list(pool.map(infer, xs))
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_a_killed_replica_is_replaced_and_every_request_succeeds(served: str) -> None:
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    result = ray_failover.failover(served, "mlp", "mlp", "x", x, requests=200)
    assert result["replicas"] == 2
    assert result["ok"] == 200 and result["gave_up"] == 0
    assert result["replacement"] and result["replicas_after"] == 2
