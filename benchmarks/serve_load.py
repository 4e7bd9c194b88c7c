"""Load on the generated server (loopback only, bounded in count and time), beside in-process calls.

    python benchmarks/serve_load.py [--requests 200] [--seconds 20] [--rounds 3] [--soak 120]

Two models: a small CNN taking float32[N, 3, 224, 224] (sub-millisecond: the server's own cost
dominates) and PP-OCRv4 text detection at float32[1, 3, 384, 384] (tens of ms per inference, from
fixtures/real_models.py). For the CNN it starts the bundle's server twice (dynamic batching off,
and on with max_batch_size 16) and measures throughput and p50/p99 at concurrency 1, 4 and 16 for:
in-process ``runtime.infer``, GPUX ``/predict`` (JSON), v2 JSON and v2 binary; for the detector
the same at concurrency 1 and 4, batching off. Overhead per request: server p50 minus in-process
p50 at concurrency 1, the median of ``--rounds`` interleaved rounds. ``--soak`` adds a
concurrency-16 soak (off by default). Writes the "Server" section of docs/benchmarks.md (the rest
of that file is benchmarks/run.py's).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures import models  # noqa: E402
from fixtures.real_models import CATALOG, fetch  # noqa: E402
from gpuxc.build.pipeline import compile_project  # noqa: E402

START = "<!-- serve_load.py: start -->"
END = "<!-- serve_load.py: end -->"
CLIENTS = ("GPUX /predict JSON", "v2 JSON", "v2 binary")


@dataclass(frozen=True)
class Model:
    name: str  # gpux.yml name, so /v2/models/<name>/infer
    label: str
    input: str
    output: str
    shape: tuple[int, ...]
    levels: tuple[int, ...]
    batches: tuple[int, ...]  # serving.batch_size values to run the server with

    def onnx_bytes(self) -> bytes:
        if self.name == "cnn":
            return bytes(models.tiny_cnn(dynamic_spatial=True).SerializeToString())
        return fetch(CATALOG["ppocrv4-det"]).read_bytes()


MODELS = (
    Model("cnn", "small CNN", "image", "logits", (1, 3, 224, 224), (1, 4, 16), (1, 16)),
    Model("det", "PP-OCRv4 det", "x", "sigmoid_0.tmp_0", (1, 3, 384, 384), (1, 4), (1,)),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build(work: Path, model: Model, batch: int) -> Path:
    project = work / f"{model.name}{batch}"
    project.mkdir()
    (project / "model.onnx").write_bytes(model.onnx_bytes())
    serving = f"serving:\n  batch_size: {batch}\n  max_queue_delay: 0.002\n  max_concurrency: 256\n"
    (project / "gpux.yml").write_text(f"name: {model.name}\nmodel:\n  source: ./model.onnx\n{serving}",
                                      encoding="utf-8")  # fmt: skip
    [result] = compile_project(project, ["cpu"], work / f"dist-{model.name}{batch}")
    return result.path


def load(call: Callable[[], None], concurrency: int, requests: int, seconds: float) -> dict[str, float]:
    """``requests`` calls over ``concurrency`` threads, stopping early after ``seconds``."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    left = [requests]

    def worker() -> None:
        while True:
            with lock:
                if left[0] <= 0 or time.monotonic() > stop:
                    return
                left[0] -= 1
            start = time.perf_counter()
            call()
            with lock:
                latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - began
    ms = sorted(x * 1000 for x in latencies)
    return {"rps": len(ms) / wall, "p50": statistics.median(ms), "p99": ms[int(0.99 * (len(ms) - 1))], "n": len(ms)}


def serve(bundle: Path, blocked: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The bundle's server; ``blocked``: a folder of modules that fail to import, put first on its path."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(blocked or ""), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, str(bundle), "serve", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def binary_request(x: np.ndarray, model: Model) -> tuple[bytes, bytes]:
    """The JSON header and the whole body of a v2 binary request asking for a binary output."""
    header = json.dumps({"inputs": [{"name": model.input, "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": model.output, "parameters": {"binary_data": True}}]}).encode()
    return header, header + x.tobytes()


def clients(url: str, x: np.ndarray, model: Model = MODELS[0]) -> dict[str, Callable[[], None]]:
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=url, timeout=60)
        return local.c

    gpux_body = json.dumps({model.input: x.tolist()})
    v2_json = json.dumps({"inputs": [{"name": model.input, "datatype": "FP32", "shape": list(x.shape),
                                      "data": x.ravel().tolist()}]})  # fmt: skip
    header, binary = binary_request(x, model)
    infer = f"/v2/models/{model.name}/infer"

    def check(reply: httpx.Response) -> None:
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")

    return {
        "GPUX /predict JSON": lambda: check(client().post("/predict", content=gpux_body,
                                                           headers={"content-type": "application/json"})),
        "v2 JSON": lambda: check(client().post(infer, content=v2_json,
                                                headers={"content-type": "application/json"})),
        "v2 binary": lambda: check(client().post(infer, content=binary,
                                                  headers={"Inference-Header-Content-Length": str(len(header)),
                                                           "content-type": "application/octet-stream"})),
    }  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(bundle: Path, x: np.ndarray, seconds: float, concurrency: int = 16) -> dict[str, Any]:
    """v2 binary at ``concurrency`` for ``seconds``: status counts and the server's RSS over time."""
    proc, url = serve(bundle)
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    samples: list[float] = []
    stop = time.monotonic() + seconds
    call = clients(url, x)["v2 binary"]

    def worker() -> None:
        while time.monotonic() < stop:
            try:
                call()
                code = 200
            except RuntimeError as exc:
                code = int(str(exc).split()[1].rstrip(":")) if str(exc).startswith("HTTP ") else -1
            with lock:
                statuses[code] = statuses.get(code, 0) + 1

    try:
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        while time.monotonic() < stop:
            samples.append(rss_mb(proc.pid))
            time.sleep(max(1.0, seconds / 20))
        for t in threads:
            t.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    third = max(1, len(samples) // 3)
    return {"seconds": seconds, "statuses": statuses, "rss_first_third_mb": statistics.median(samples[:third]),
            "rss_last_third_mb": statistics.median(samples[-third:])}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds for overheads and the ratio")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of a concurrency-16 soak (default: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    soaked: dict[str, Any] | None = None
    rows: list[tuple[str, str, str, int, dict[str, float]]] = []
    overheads: list[tuple[str, str, float, float]] = []  # model, client, in-process p50, server p50
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="gpuxc-load-") as tmp:
        blocked = Path(tmp) / "blocked"  # the json-module path, for the before/after comparison
        blocked.mkdir()
        for name in ("simdjson", "orjson"):
            # What an uninstalled module raises (FastAPI catches only this one for orjson).
            (blocked / f"{name}.py").write_text(f"raise ModuleNotFoundError('no {name}: serve_load.py')\n",
                                                encoding="utf-8")  # fmt: skip
        for model in MODELS:
            x = np.random.default_rng(0).standard_normal(model.shape).astype(np.float32)
            for batch in model.batches:
                bundle = build(Path(tmp), model, batch)
                rt = in_process(bundle)
                proc, url = serve(bundle)
                try:
                    calls = {"in-process infer": local_call(rt, model, x), **clients(url, x, model)}
                    if batch == 1:
                        overheads += overhead(calls, model, args)
                        if model is MODELS[0]:  # the same JSON clients on the json-module path
                            overheads += plain_json_overhead(bundle, blocked, calls, x, model, args)
                        else:
                            ratios = throughput_ratios(
                                {**calls, "v2 binary (http.client)": stdlib_binary(url, x, model)}, args)
                    rows += cells(calls, model, batch, args)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                    rt.cleanup()
                if batch > 1 and args.soak > 0:
                    soaked = soak(bundle, x, args.soak)
                    print(soaked, file=sys.stderr)
    write_section(args.out, rows, overheads, ratios, soaked)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cells(calls: dict[str, Callable[[], Any]], model: Model, batch: int, args: argparse.Namespace
          ) -> list[tuple[str, str, str, int, dict[str, float]]]:  # fmt: skip
    rows = []
    mode = f"batching {'on (16)' if batch > 1 else 'off'}"
    for level in model.levels:
        for name, call in calls.items():
            if name == "in-process infer" and batch > 1:
                continue  # the same with batching on or off
            rows.append((model.label, mode, name, level, load(call, level, args.requests, args.seconds)))
            print(rows[-1], file=sys.stderr)
    return rows


def local_call(rt: Any, model: Model, x: np.ndarray) -> Callable[[], None]:
    def call() -> None:
        rt.infer({model.input: x})

    return call


def in_process(bundle: Path) -> Any:
    """The bundle's own runner, loaded in this process (a fresh import per bundle)."""
    sys.path.insert(0, str(bundle))
    for mod in [m for m in sys.modules if m == "runner" or m.startswith("runner.")]:
        del sys.modules[mod]
    import runner

    rt = runner.load()
    sys.path.remove(str(bundle))
    return rt


def overhead(calls: dict[str, Callable[[], Any]], model: Model, args: argparse.Namespace,
             names: tuple[str, ...] = CLIENTS, suffix: str = "") -> list[tuple[str, str, float, float]]:  # fmt: skip
    """Concurrency 1, in-process and each client in turn, ``rounds`` times: median p50s per client.
    Interleaving keeps a slow spell of the (shared) machine from landing on one client only."""
    p50s: dict[str, list[float]] = {name: [] for name in ("in-process infer", *names)}
    requests = max(20, args.requests // 2)
    for _ in range(args.rounds):
        for name in p50s:
            p50s[name].append(load(calls[name], 1, requests, args.seconds)["p50"])
    local = statistics.median(p50s["in-process infer"])
    return [(model.label, name + suffix, local, statistics.median(p50s[name])) for name in names]


def plain_json_overhead(bundle: Path, blocked: Path, calls: dict[str, Callable[[], Any]], x: np.ndarray,
                        model: Model, args: argparse.Namespace) -> list[tuple[str, str, float, float]]:  # fmt: skip
    """The JSON clients against a second server without pysimdjson and orjson (the json module)."""
    proc, url = serve(bundle, blocked)
    try:
        plain = {**calls, **clients(url, x, model)}
        return overhead(plain, model, args, CLIENTS[:2], " (json module)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def stdlib_binary(url: str, x: np.ndarray, model: Model) -> Callable[[], None]:
    """v2 binary through ``http.client``: a lighter client than httpx (on 2 shared cores the
    client's CPU comes out of the server's share), for the throughput ratio only."""
    header, body = binary_request(x, model)
    host, port = url.rsplit("//", 1)[1].split(":")
    headers = {"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"}
    local = threading.local()

    def call() -> None:
        if not hasattr(local, "c"):
            local.c = http.client.HTTPConnection(host, int(port), timeout=60)
        local.c.request("POST", f"/v2/models/{model.name}/infer", body=body, headers=headers)
        reply = local.c.getresponse()
        reply.read()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}")

    return call


def throughput_ratios(calls: dict[str, Callable[[], Any]], args: argparse.Namespace) -> dict[str, list[float]]:
    """v2 binary over in-process requests/s at concurrency 4, one ratio per interleaved round and client."""
    ratios: dict[str, list[float]] = {"httpx": [], "http.client": []}
    for _ in range(args.rounds):
        local = load(calls["in-process infer"], 4, args.requests // 2, args.seconds)["rps"]
        for client, name in (("httpx", "v2 binary"), ("http.client", "v2 binary (http.client)")):
            server = load(calls[name], 4, args.requests // 2, args.seconds)["rps"]
            ratios[client].append(server / local)
            print(f"concurrency 4: in-process {local:.1f}/s, {name} {server:.1f}/s", file=sys.stderr)
    return ratios


def write_section(out: Path, rows: list[tuple[str, str, str, int, dict[str, float]]],
                  overheads: list[tuple[str, str, float, float]], ratios: dict[str, list[float]],
                  soaked: dict[str, Any] | None) -> None:  # fmt: skip
    ratio = ""
    if ratios:
        ratio = (f"{MODELS[1].label} at concurrency 4, v2 binary requests/s over in-process requests/s, medians "
                 "of interleaved rounds: " + "; ".join(
                     f"with the {client} client **{100 * statistics.median(r):.0f}%** "
                     f"({', '.join(f'{100 * v:.0f}%' for v in r)})" for client, r in ratios.items())
                 + ". The table's cells use httpx; on these 2 shared cores the client's CPU comes out of the "
                 "server's share, and http.client costs less of it.")
    section = [
        START,
        "## Server",
        "",
        "Written by `python benchmarks/serve_load.py` on a 2-core machine shared with other jobs (ratios",
        "and medians matter, not single cells). Models: a small CNN on float32[1, 3, 224, 224] (602 KB per",
        "request as binary, about 3 MB as 17-digit JSON) and PP-OCRv4 det on float32[1, 3, 384, 384]",
        "(tens of ms per inference). Loopback only; each cell the same bounded load (requests or seconds,",
        "whichever ends first). The server decodes JSON tensors with pysimdjson and writes JSON with",
        "orjson (both in a bundle's serve requirements; docs/server.md).",
        "",
        "Overhead per request: server p50 minus in-process p50 at concurrency 1, medians of interleaved rounds.",
        "\"(json module)\": the same bundle served without pysimdjson and orjson (their imports blocked), the",
        "path a bundle takes when they are not installed, and the one every bundle took before.",
        "",
        "| model | client | in-process p50 ms | server p50 ms | overhead ms |",
        "|---|---|---:|---:|---:|",
        *(f"| {label} | {name} | {local:.2f} | {server:.2f} | {server - local:.2f} |"
          for label, name, local, server in overheads),  # fmt: skip
        "",
        *([ratio, ""] if ratio else []),
        "| model | server | client | concurrency | requests/s | p50 ms | p99 ms | requests |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *(
            f"| {label} | {mode} | {name} | {level} | {r['rps']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['n']:.0f} |"
            for label, mode, name, level, r in rows
        ),  # fmt: skip
    ]
    if soaked:
        ok = soaked["statuses"].get(200, 0)
        other = {k: v for k, v in soaked["statuses"].items() if k != 200}
        section += [
            "",
            f"Soak: v2 binary at concurrency 16 for {soaked['seconds']:.0f} s with batching on: {ok} responses 200, "
            f"other statuses {other or 'none'}; server RSS {soaked['rss_first_third_mb']:.0f} MiB (median of the first "
            f"third) -> {soaked['rss_last_third_mb']:.0f} MiB (last third).",
        ]
    section.append(END)
    text = out.read_text(encoding="utf-8") if out.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[: text.index(START)] + "\n".join(section) + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(section) + "\n"
    out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
