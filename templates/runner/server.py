"""HTTP server of this bundle: GPUX's API and the Open Inference Protocol (KServe v2).

GPUX: POST /predict, GET /health, /info, /metrics. v2: GET /v2, /v2/health/live|ready,
/v2/models/{name}[/versions/{v}][/ready], POST .../infer with JSON or binary tensors.
Client mistakes get a 4xx with a JSON body (v2: {"error"}; GPUX: {"error", "message",
"details"}), never a traceback, a file path or an internal name.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from runner import uploads, v2
from runner.api import GPUXRuntime, InferenceTimeout, InputError, load, to_jsonable
from runner.labels import MAX_TOP_K
from runner.metrics import Guard, Metrics

API_KEY_ENV = "GPUXC_API_KEY"
RANKED_KEY = "ranked"  # /predict: labelled outputs ranked as {label, score}, beside the raw tensors


class _TooLarge(Exception):
    pass


def _gpux_error(status: int, error: str, message: str, details: Any = None, headers: dict[str, str] | None = None
                ) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "message": message, "details": details},
                        headers=headers)


def _v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


class _Batcher:
    """Dynamic batching: requests arriving within ``delay`` are run as one batch along dim 0.

    Only requests whose non-batch dims and dtypes match are combined; each gets back exactly
    its own rows. Requests are validated before they are queued, so a malformed one never
    joins a batch; if a batch still fails, its requests are re-run one by one so that one
    bad request cannot fail the others.
    """

    def __init__(self, rt: GPUXRuntime, max_batch: int, delay: float, metrics: Metrics) -> None:
        self.rt, self.max_batch, self.delay, self.metrics = rt, max_batch, delay, metrics
        self.queue: asyncio.Queue[tuple[dict[str, Any], int, asyncio.Future[Any], float]] | None = None
        self.carry: tuple[dict[str, Any], int, asyncio.Future[Any], float] | None = None

    @staticmethod
    def eligible(rt: GPUXRuntime) -> bool:
        """Every input and output has the same symbolic first dim (a batch dimension)."""
        firsts = [(s.get("shape") or [1])[0] for s in list(rt.inputs.values()) + list(rt.outputs.values())]
        return bool(firsts) and all(isinstance(d, str) or d is None for d in firsts) and len(
            {d for d in firsts if isinstance(d, str)}) <= 1

    async def submit(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._loop())
        rows = int(next(iter(feeds.values())).shape[0])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((feeds, rows, future, time.perf_counter()))
        return await future

    @staticmethod
    def _key(feeds: dict[str, Any]) -> tuple[Any, ...]:
        return tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(feeds.items()))

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = self.carry or await self.queue.get()
            self.carry = None
            batch, rows, key = [first], first[1], self._key(first[0])
            deadline = loop.time() + self.delay
            while rows < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if self._key(item[0]) != key or rows + item[1] > self.max_batch:
                    self.carry = item  # starts the next batch
                    break
                batch.append(item)
                rows += item[1]
            await self._run(batch, rows)

    async def _run(self, batch: list[tuple[dict[str, Any], int, asyncio.Future[Any], float]], rows: int) -> None:
        import numpy as np

        started = time.perf_counter()
        live = [b for b in batch if not b[2].done()]  # timed-out requests were already answered 504
        if not live:
            return
        feeds = {name: np.concatenate([b[0][name] for b in live], axis=0) for name in live[0][0]}
        try:
            outputs = await run_in_threadpool(self.rt.infer, feeds)
        except Exception:
            for item in live:  # isolate: each request on its own
                try:
                    result = await run_in_threadpool(self.rt.infer, item[0])
                    if not item[2].done():
                        item[2].set_result(result)
                except Exception as exc:
                    if not item[2].done():
                        item[2].set_exception(exc)
            return
        self.metrics.inference(time.perf_counter() - started, started - min(b[3] for b in live),
                               sum(b[1] for b in live))
        offset = 0
        for _feeds, count, future, _ in live:
            part = {name: value[offset:offset + count] for name, value in outputs.items()}
            offset += count
            if not future.done():
                future.set_result(part)


def create_app(runtime: GPUXRuntime | None = None) -> FastAPI:
    """The FastAPI app; ``uvicorn runner.server:create_app --factory`` starts it."""
    rt = runtime or load()
    info = rt.get_model_info()
    serving = rt.manifest.get("serving", {})
    request_timeout = float(serving.get("timeout", 30.0))
    max_body = int(serving.get("max_body_bytes", 64 * 1024 * 1024))
    max_concurrency = int(serving.get("max_concurrency", 64))
    api_key = os.environ.get(API_KEY_ENV) or None
    model_name, model_version = str(info["name"]), str(info["version"])
    specs_in = dict(rt.inputs)
    specs_out = dict(rt.outputs)
    kind = rt.preprocessing  # "image"/"text": /predict and v2 take encoded images or text too
    media_types = {"image": ("application/json", "multipart/form-data"),
                   "text": ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
                   }.get(kind or "", ("application/json",))  # fmt: skip
    encoded = {rt.preprocessed_input: kind} if kind and rt.preprocessed_input else {}
    metrics = Metrics()
    slots = {"busy": 0}
    max_batch = int(serving.get("max_batch_size", 1))
    batcher = (_Batcher(rt, max_batch, float(serving.get("max_queue_delay", 0.002)), metrics)
               if max_batch > 1 and _Batcher.eligible(rt) else None)
    app = FastAPI(
        title=f"{model_name} ({info['target']})",
        description="gpuxc bundle server: GPUX API and the Open Inference Protocol (KServe v2)",
        version=model_version,
    )

    app.add_middleware(Guard, api_key=api_key, metrics=metrics)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise _TooLarge
        body = bytearray()
        async for chunk in request.stream():  # chunked bodies too: stop at the cap, never buffer past it
            body.extend(chunk)
            if len(body) > max_body:
                raise _TooLarge
        return bytes(body)

    async def run_model(feeds: dict[str, Any]) -> dict[str, Any]:
        """One inference with the concurrency limit, the timeout and the metrics."""
        arrived = time.perf_counter()
        if slots["busy"] >= max_concurrency:
            raise _Busy
        slots["busy"] += 1
        if metrics.prom:
            metrics.p_in_flight.inc()
        try:
            if batcher is not None:
                return await asyncio.wait_for(batcher.submit(feeds), timeout=request_timeout)
            started = time.perf_counter()
            outputs = await asyncio.wait_for(run_in_threadpool(rt.infer, feeds), timeout=request_timeout)
            batch = next((int(v.shape[0]) for v in feeds.values() if getattr(v, "ndim", 0) > 0), 1)
            metrics.inference(time.perf_counter() - started, started - arrived, batch)
            return outputs
        finally:
            slots["busy"] -= 1
            if metrics.prom:
                metrics.p_in_flight.dec()

    # -- GPUX --------------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "healthy", "model": model_name, "version": model_version, "target": info["target"]}

    @app.get("/info")
    async def model_info() -> dict[str, Any]:
        return info

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Any:
        if metrics.prom and "application/json" not in request.headers.get("accept", ""):
            return Response(metrics.prom.generate_latest(metrics.registry),
                            media_type="text/plain; version=0.0.4; charset=utf-8")
        with metrics.lock:
            requests = [{"endpoint": p, "status": s, "count": c} for (p, s), c in sorted(metrics.requests.items())]
            avg = metrics.inference_ms_total / metrics.inferences if metrics.inferences else None
            count = metrics.inferences
        return {
            "provider": rt.get_provider_info(),
            "available_providers": rt.get_available_providers(),
            "requests": requests,
            "inferences": count,
            "avg_inference_ms": avg,
            "in_flight": slots["busy"],
            "batching": {"max_batch_size": max_batch, "enabled": batcher is not None},
            "uptime_s": time.time() - metrics.started,
        }

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in media_types and not (kind == "image" and content_type.startswith("image/")):
            return _gpux_error(415, "unsupported_media_type", f"send inputs as {uploads.accepted(kind)}")
        top_k = request.query_params.get("top_k")
        if top_k is not None and not (top_k.isdigit() and 1 <= int(top_k) <= MAX_TOP_K):
            return _gpux_error(400, "invalid_input", f"top_k must be an integer from 1 to {MAX_TOP_K}")
        try:
            body = await read_body(request)
        except _TooLarge:
            return _gpux_error(413, "payload_too_large", f"request body over {max_body} bytes")
        try:
            data = await uploads.predict_inputs(content_type, request.headers, body, kind,
                                                  rt.preprocessed_input or "")
            # Decoding an image or tokenising takes milliseconds: off the event loop. Strings are
            # never read as file paths from here (paths=False).
            feeds = (await run_in_threadpool(rt.prepare, data, paths=False) if kind else rt.prepare(data))
            outputs = await run_model(feeds)
        except uploads.UploadError as exc:
            return _gpux_error(exc.status, exc.error, exc.message, exc.details)
        except InputError as exc:
            return _gpux_error(400, "invalid_input", str(exc))
        except _Busy:
            return _gpux_error(503, "busy", "too many requests in flight", headers={"Retry-After": "1"})
        except (asyncio.TimeoutError, InferenceTimeout):
            return _gpux_error(504, "timeout", f"inference did not finish within {min(request_timeout, rt.timeout):g}s")
        except Exception:
            # Runtime failures can echo file paths and internal node names: keep them out of responses.
            return _gpux_error(500, "inference_failed", "the model failed on these inputs")
        reply = {name: to_jsonable(value) for name, value in outputs.items()}
        ranked = rt.rank_labels(outputs, int(top_k) if top_k else None)
        if ranked and RANKED_KEY not in reply:  # a model output of that name keeps it
            reply[RANKED_KEY] = ranked
        return reply

    # -- Open Inference Protocol v2 -------------------------------------------------------------

    def model_matches(name: str, version: str | None) -> bool:
        return name == model_name and (version is None or version == model_version)

    def metadata() -> dict[str, Any]:
        def tensors(specs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"name": n, "datatype": v2.v2_datatype(s["dtype"]),
                     "shape": [d if isinstance(d, int) else -1 for d in (s.get("shape") or [])]}
                    for n, s in specs.items()]
        inputs = tensors(specs_in)
        if kind == "text":  # text in, as BYTES; the token tensors stay accepted as well
            inputs.append({"name": rt.preprocessed_input, "datatype": "BYTES", "shape": [-1]})
        return {"name": model_name, "versions": [model_version], "platform": f"gpuxc_{info['target']}",
                "inputs": inputs, "outputs": tensors(specs_out)}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "gpuxc", "version": str(rt.manifest.get("gpuxc_version", "")),
                "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        return {"ready": True}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> Any:
        if not model_matches(name, version):
            return _v2_error(404, "unknown model or version")
        return metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Any:
        if not model_matches(name, version):
            return _v2_error(404, "unknown model or version")
        return {"name": model_name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Any:
        if not model_matches(name, version):
            return _v2_error(404, "unknown model or version")
        header_length = request.headers.get(v2.HEADER_LENGTH)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        allowed = ("application/json", "application/octet-stream", "")
        if content_type not in allowed:
            return _v2_error(415, f"unsupported content type '{content_type}'")
        if header_length is None and content_type == "application/octet-stream":
            return _v2_error(400, "binary requests need the Inference-Header-Content-Length header")
        try:
            body = await read_body(request)
            req, tail = v2.split_body(body, header_length)
            decoded = v2.decode_inputs(req, tail, specs_in, encoded)
            feeds = await run_in_threadpool(rt.prepare, decoded, paths=False) if kind else rt.prepare(decoded)
            outputs = await run_model(feeds)
            payload, json_length = v2.encode_response(model_name, version, outputs, specs_out, req)
        except _TooLarge:
            return _v2_error(413, f"request body over {max_body} bytes")
        except (v2.ProtocolError, InputError) as exc:
            return _v2_error(400, str(exc))
        except _Busy:
            return _v2_error(503, "too many requests in flight", headers={"Retry-After": "1"})
        except (asyncio.TimeoutError, InferenceTimeout):
            return _v2_error(504, "inference timed out")
        except Exception:
            return _v2_error(500, "the model failed on these inputs")
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_length)})

    return app


class _Busy(Exception):
    pass


def serve(host: str | None = None, port: int | None = None, workers: int | None = None,
          provider: str | None = None, log_level: str = "info") -> None:
    import uvicorn

    if provider:
        os.environ["GPUXC_PROVIDER"] = provider  # worker processes read it too
    rt = load()  # fail fast, before binding, if the bundle cannot load
    serving = rt.manifest.get("serving", {})
    host = host or serving.get("host", "127.0.0.1")
    port = int(port or serving.get("port", 8080))
    workers = int(workers or serving.get("max_workers", 1))
    # On SIGTERM uvicorn stops accepting and lets in-flight requests finish for this long.
    grace = int(max(1, float(serving.get("timeout", 30.0)) + 1))
    if workers > 1:
        # Each worker process imports the factory and loads the model once.
        uvicorn.run("runner.server:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, timeout_graceful_shutdown=grace)
    else:
        uvicorn.run(create_app(rt), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace)
