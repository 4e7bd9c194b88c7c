"""Ray Serve failover: a gpuxc export served by two replicas on a local Ray cluster, one killed mid-load.

Counts what a client with a retry policy sees (requests, failed attempts, retries, requests that
never succeeded) and how long Ray takes to bring a replacement replica up. Writes its section of
docs/benchmarks.md; tests/export/test_ray.py runs the same :func:`failover`.

    .venv/bin/python benchmarks/ray_failover.py [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

START = "<!-- ray_failover.py: start -->"
END = "<!-- ray_failover.py: end -->"
RETRIES = 8  # per request: attempts after the first, on a 5xx or a connection error
BACKOFF_S = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replicas() -> set[str]:
    """The live Serve replica actors' names (public API; needs no dashboard)."""
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]}


def running(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    from ray.serve._private.common import ReplicaState

    return sum(d.replica_states.get(ReplicaState.RUNNING, 0) for d in status.deployments.values())


def v2_request(x: np.ndarray, input_name: str) -> tuple[bytes, int]:
    """A v2 binary request's body and the length of its JSON header."""
    header = json.dumps({"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes(), len(header)


def failover(url: str, app: str, model: str, input_name: str, x: np.ndarray, requests: int = 200,
             concurrency: int = 4, kill_after: int = 40) -> dict[str, Any]:
    """``requests`` v2 binary inferences; after ``kill_after`` succeeded, one replica is ray.kill'ed."""
    import ray

    body, header_len = v2_request(x, input_name)
    headers = {"Inference-Header-Content-Length": str(header_len), "Content-Type": "application/octet-stream"}
    endpoint = f"{url}/v2/models/{model}/infer"
    lock = threading.Lock()
    counts = {"ok": 0, "failed_attempts": 0, "retries": 0, "gave_up": 0, "max_retries_one_request": 0}
    killed: list[float] = []
    before = replicas()

    def one(client: httpx.Client) -> None:
        for attempt in range(RETRIES + 1):
            try:
                reply = client.post(endpoint, content=body, headers=headers, timeout=30)
                good = reply.status_code == 200
            except httpx.TransportError:
                good = False
            if good:
                with lock:
                    counts["ok"] += 1
                    counts["max_retries_one_request"] = max(counts["max_retries_one_request"], attempt)
                return
            with lock:
                counts["failed_attempts"] += 1
                if attempt < RETRIES:
                    counts["retries"] += 1
            time.sleep(BACKOFF_S * (attempt + 1))
        with lock:
            counts["gave_up"] += 1

    def worker(share: int) -> None:
        with httpx.Client() as client:
            for _ in range(share):
                one(client)

    def killer() -> None:
        while counts["ok"] < kill_after:
            time.sleep(0.01)
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed.append(time.perf_counter())

    began = time.perf_counter()
    shares = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency + 1) as pool:
        kill_job = pool.submit(killer)
        jobs = [pool.submit(worker, share) for share in shares]
        for job in jobs:
            job.result()
        kill_job.result(timeout=60)
    wall = time.perf_counter() - began
    # Recovery: from the kill until a replica that was not there before is running and the count is back.
    recovered = None
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        now = replicas()
        if now - before and running(app) >= len(before):
            recovered = time.perf_counter() - killed[0]
            break
        time.sleep(0.1)
    return {"requests": requests, "concurrency": concurrency, "replicas": len(before), **counts,
            "wall_s": round(wall, 2), "replacement": bool(recovered is not None),
            "killed_after_s": round(killed[0] - began, 2),
            "recovery_s": None if recovered is None else round(recovered, 2),
            "replicas_after": len(replicas())}


def write_section(path: Path, result: dict[str, Any]) -> None:
    from benchmarks.doc_section import replace_section

    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items())
    text = f"""{START}
## Ray Serve failover (benchmarks/ray_failover.py)

A small MLP bundle (`cpu`, max_batch_size 4: Ray's `@serve.batch`) exported with
`gpuxc export ray --replicas 2`, served by a local Ray cluster (`ray.init(num_cpus=2)`, the Serve HTTP
proxy on loopback). Client threads send v2 binary requests and retry on a 5xx or a connection error
(at most {RETRIES} retries, linear backoff {BACKOFF_S} s); once some have succeeded, one replica actor
is `ray.kill`ed. `gave_up` counts requests that never succeeded; `recovery_s` is the time from the kill
until a replica that was not there before is running and the deployment has its two replicas again.

| figure | value |
| --- | --- |
{rows}
{END}
"""
    replace_section(path, text, START, END)


def main() -> int:
    import ray

    from fixtures import models
    from gpuxc.build.pipeline import compile_project
    from gpuxc.export import open_bundle
    from gpuxc.export import ray as ray_export

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = export_mlp(work, models, compile_project, open_bundle, ray_export)
        port = free_port()
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"working_dir": str(out)}, log_to_driver=False)
        try:
            ray_export.run_app(out, "mlp", {"host": "127.0.0.1", "port": port})
            x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
            result = failover(f"http://127.0.0.1:{port}", "mlp", "mlp", "x", x, requests=args.requests)
        finally:
            ray.shutdown()
    print(json.dumps(result, indent=2))
    write_section(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md", result)
    return 0


def export_mlp(work: Path, models: Any, compile_project: Any, open_bundle: Any, ray_export: Any) -> Path:
    """An MLP bundle with a batch dim and max_batch_size 4, exported for 2 replicas into work/ray."""
    project = work / "mlp"
    project.mkdir()
    models.save(models.mlp(), project / "model.onnx")
    (project / "gpux.yml").write_text("name: mlp\nmodel:\n  source: ./model.onnx\n"
                                      "serving:\n  batch_size: 4\n  max_queue_delay: 0.005\n", encoding="utf-8")
    [built] = compile_project(project, ["cpu"], work / "dist")
    ray_export.export(built.path, work / "ray", open_bundle(built.path), replicas=2)
    return work / "ray"


if __name__ == "__main__":
    raise SystemExit(main())
