"""``gpuxc export ray``: the bundle as a Ray Serve application (docs/deploy.md).

OUT holds ``app.py`` (templates/ray/app.py copied verbatim: no model or user string is ever written
into code), ``gpuxc-ray.json`` (what app.py reads at import: the bundle folder, batching, the
deployment options), ``serve.yaml`` (a Serve config file with the same options, for ``serve run`` /
``serve deploy``) and ``bundle/`` (the bundle, copied whole: replicas get it through the
application's ``runtime_env.working_dir``).

Sizing, from the manifest's ``serving`` (a replica is what a server worker is elsewhere):
- ``--replicas N``: N fixed replicas. Otherwise max_workers 1: one replica; max_workers > 1:
  autoscaling from 1 to max_workers replicas.
- ``max_ongoing_requests`` = max_concurrency: Ray queues beyond it instead of the runner answering 503.
- ``target_ongoing_requests`` = max(max_batch_size, max_concurrency // 4): scale out while a replica
  still has headroom, yet never below what fills one batch.
- ``@serve.batch`` when max_batch_size > 1 and every input and output has the same batch dim.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gpuxc.bundle.manifest import Manifest
from gpuxc.errors import ExportError
from gpuxc.export import ExportResult, write_export

ENGINE = "ray"
# Targets whose bundle runner runs in a Linux Python process (a Ray replica). coreml predicts only on
# macOS and web bundles run in a browser: neither can serve from a Ray worker.
# directml runs on Windows only, where Ray Serve is not supported.
RUNNABLE_TARGETS = ("cpu", "openvino", "cuda", "tensorrt")
GPU_TARGETS = ("cuda", "tensorrt")
DEPLOYMENT = "bundle"  # the deployment's name in app.py and serve.yaml
BUNDLE_FOLDER = "bundle"
CONFIG_NAME = "gpuxc-ray.json"
HEALTH_CHECK_PERIOD_S = 10.0
HEALTH_CHECK_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0


def app_template() -> Path:
    from gpuxc.bundle.runner_source import template_root

    return template_root() / "ray" / "app.py"


def _targets(manifest: Manifest) -> list[str]:
    return [v.target for v in manifest.variants] or [manifest.target]


def check_runnable(manifest: Manifest) -> list[str]:
    """The bundle's targets a Ray replica can run; none is an ExportError naming what would work."""
    runnable = [t for t in _targets(manifest) if t in RUNNABLE_TARGETS]
    if not runnable:
        raise ExportError(f"{manifest.name}: a {'/'.join(_targets(manifest))} bundle cannot run in a Ray Serve "
                          f"replica; export a bundle compiled for {', '.join(RUNNABLE_TARGETS)}")  # fmt: skip
    return runnable


def batching(manifest: Manifest) -> dict[str, Any] | None:
    """Ray's ``@serve.batch`` settings, or None when the bundle does not batch."""
    serving = manifest.serving
    if serving.max_batch_size <= 1:
        return None
    firsts = [(s.shape or [1])[0] for s in manifest.inputs + manifest.outputs]
    named = {d for d in firsts if isinstance(d, str)}
    if not firsts or not all(isinstance(d, str) or d is None for d in firsts) or len(named) > 1:
        return None  # no shared batch dim: requests cannot be stacked (as the runner's own batcher decides)
    return {"max_batch_size": serving.max_batch_size, "batch_wait_timeout_s": serving.max_queue_delay}


def deployment_options(manifest: Manifest, replicas: int | None = None) -> dict[str, Any]:
    """The deployment's options (module docstring: how each follows from ``serving``)."""
    serving = manifest.serving
    options: dict[str, Any] = {"max_ongoing_requests": serving.max_concurrency,
                               "health_check_period_s": HEALTH_CHECK_PERIOD_S,
                               "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S}  # fmt: skip
    if replicas is not None:
        if replicas < 1:
            raise ExportError(f"--replicas {replicas}: give at least 1")
        options["num_replicas"] = replicas
    elif serving.max_workers <= 1:
        options["num_replicas"] = 1
    else:
        target = max(1, serving.max_batch_size, serving.max_concurrency // 4)
        options["autoscaling_config"] = {"min_replicas": 1, "max_replicas": serving.max_workers,
                                         "target_ongoing_requests": min(target, serving.max_concurrency)}
    actor: dict[str, Any] = {"num_cpus": 1}
    if manifest.target in GPU_TARGETS:
        actor["num_gpus"] = 1
    options["ray_actor_options"] = actor
    return options


def serve_config(manifest: Manifest, options: dict[str, Any]) -> dict[str, Any]:
    """serve.yaml. A Serve config accepts only remote URIs as ``runtime_env.working_dir``, so it names
    none: ``serve run serve.yaml --working-dir .`` in OUT uploads OUT; for ``serve deploy``, put OUT
    zipped where the cluster can fetch it and add it as the application's ``runtime_env.working_dir``."""
    return {
        "proxy_location": "EveryNode",
        # serving.host: loopback unless gpux.yml asks for more, like `serve` (edit it for a cluster's proxy).
        "http_options": {"host": manifest.serving.host, "port": manifest.serving.port},
        "applications": [{
            "name": manifest.name,
            "route_prefix": "/",
            "import_path": "app:app",
            "deployments": [{"name": DEPLOYMENT, **options}],
        }],
    }  # fmt: skip


def export(bundle: Path, out: Path, manifest: Manifest, replicas: int | None = None,
           address: str | None = None) -> ExportResult:  # fmt: skip
    """Write OUT (module docstring); with ``address``, also deploy it there (:func:`deploy`)."""
    runnable = check_runnable(manifest)
    options = deployment_options(manifest, replicas)
    config = {"bundle": BUNDLE_FOLDER, "batching": batching(manifest), "deployment": options}
    template = app_template()
    if not template.is_file():
        raise ExportError(f"gpuxc installation is incomplete: no {template}")

    def write(stage: Path) -> list[str]:
        shutil.copytree(bundle, stage / BUNDLE_FOLDER, symlinks=False)
        shutil.copyfile(template, stage / "app.py")
        (stage / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        header = ("# Ray Serve config written by gpuxc export ray. In this folder:\n"
                  "#   serve run serve.yaml --working-dir .\n"
                  "# serve deploy: add runtime_env.working_dir: a URI of this folder zipped (docs/deploy.md)\n")
        body = yaml.safe_dump(serve_config(manifest, options), sort_keys=False)
        (stage / "serve.yaml").write_text(header + body, encoding="utf-8")
        copied = [f"{BUNDLE_FOLDER}/{p.relative_to(stage / BUNDLE_FOLDER).as_posix()}"
                  for p in (stage / BUNDLE_FOLDER).rglob("*") if p.is_file()]  # fmt: skip
        return ["app.py", CONFIG_NAME, "serve.yaml", *copied]

    files = write_export(out, ENGINE, bundle, write)
    notes = [f"ray: serve it with `cd {out} && serve run serve.yaml --working-dir .` "
             f"({'/'.join(runnable)}; {_sizing(options)}{', Ray batching' if config['batching'] else ''})"]
    if [t for t in _targets(manifest) if t not in RUNNABLE_TARGETS]:
        notes.append(f"ray: variants for {', '.join(t for t in _targets(manifest) if t not in RUNNABLE_TARGETS)} "
                     "cannot load in a replica; the runner falls back to the others")  # fmt: skip
    if address is not None:
        notes.append(deploy(out.resolve(), address, manifest.name))
    return ExportResult(ENGINE, out, files, notes)


def _sizing(options: dict[str, Any]) -> str:
    if "num_replicas" in options:
        return f"{options['num_replicas']} replica(s)"
    auto = options["autoscaling_config"]
    return f"{auto['min_replicas']}-{auto['max_replicas']} replicas, autoscaled"


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``ray://host:port`` split; None for ``auto`` (Ray finds the local cluster)."""
    if address == "auto":
        return None
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ExportError(f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    return parts.hostname, port


def probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address nothing answers on within ``timeout``: ray.init itself may wait far longer."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ExportError(f"--address {address}: no Ray cluster answers there ({reason}); start one with "
                          "`ray start --head` or give its address") from None  # fmt: skip


def deploy(out: Path, address: str, name: str) -> str:
    """Connect to the cluster at ``address`` with OUT as the job's working_dir and run the app there."""
    probe(address)
    try:
        import ray
    except ImportError:
        raise ExportError("--deploy needs Ray: pip install 'gpuxc[export]'") from None
    try:
        ray.init(address=address, runtime_env={"working_dir": str(out)}, log_to_driver=False,
                 logging_level=logging.ERROR)  # fmt: skip
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... with one message
        raise ExportError(f"--address {address}: cannot connect to Ray ({_first_line(exc)})") from None
    run_app(out, name)
    return f"ray: deployed application {name!r} on {address}"


def run_app(out: Path, name: str, http_options: dict[str, Any] | None = None) -> None:
    """``serve.run`` OUT/app.py's application on the connected cluster (whose job working_dir is OUT);
    returns once its replicas are running. A bundle that cannot load there is an ExportError."""
    from ray import serve

    module = load_app_module(out)
    try:
        if http_options is not None:
            serve.start(http_options=http_options)
        serve.run(module.app, name=name, route_prefix="/")
    except Exception as exc:
        raise ExportError(f"ray: application {name!r} did not start ({_first_line(exc)})") from None


def load_app_module(out: Path) -> Any:
    """OUT/app.py imported as ``app``, the name the replicas import it by (from their working_dir), so
    the deployment is pickled by reference. It needs only Ray and the standard library."""
    spec = importlib.util.spec_from_file_location("app", out / "app.py")
    if spec is None or spec.loader is None:
        raise ExportError(f"{out / 'app.py'}: cannot load the Ray application")
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module
    spec.loader.exec_module(module)
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
