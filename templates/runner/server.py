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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from runner import access, jsontensors, tracing, uploads, v2
from runner.api import (
    BUNDLE_DIR,
    PROVIDER_ENV,
    GPUXRuntime,
    InferenceTimeout,
    InputError,
    NoVariant,
    load,
    read_manifest,
)
from runner.batching import Batcher, timed
from runner.labels import MAX_TOP_K
from runner.metrics import Guard, Metrics
from runner.readiness import FAILED, LOADING, ModelState
from runner.selfcheck import POLICY_ENV

API_KEY_ENV = "GPUXC_API_KEY"
STAY_UNREADY_ENV = "GPUXC_STAY_UNREADY"  # "1": a failed self-check keeps the server up, not ready
RANKED_KEY = "ranked"  # /predict: labelled outputs ranked as {label, score}, beside the raw tensors


class _TooLarge(Exception):
    pass


def _gpux_error(status: int, error: str, message: str, details: Any = None, headers: dict[str, str] | None = None
                ) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "message": message, "details": details},
                        headers=headers)


def _v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


def create_app(runtime: GPUXRuntime | None = None, stay_unready: bool | None = None,
               bundle_dir: Path | None = None) -> FastAPI:
    """The FastAPI app; ``uvicorn runner.server:create_app --factory`` starts it.

    With ``runtime`` (loaded, its self-check done) the app is ready at once. Without, the model
    is loaded and self-checked on a background thread once the server runs (runner/readiness.py):
    until then /health and the readiness routes answer 503. A load that fails calls
    ``app.state.stop`` (set by :func:`serve`) unless ``stay_unready`` ($GPUXC_STAY_UNREADY=1).
    ``bundle_dir``: the bundle to load (default: the one this runner belongs to).
    """
    state = ModelState(runtime)
    manifest = runtime.manifest if runtime is not None else read_manifest(bundle_dir or BUNDLE_DIR)
    if stay_unready is None:
        stay_unready = os.environ.get(STAY_UNREADY_ENV) == "1"
    target = str(manifest["target"])
    serving = manifest.get("serving", {})
    request_timeout = float(serving.get("timeout", 30.0))
    max_body = int(serving.get("max_body_bytes", 64 * 1024 * 1024))
    max_concurrency = int(serving.get("max_concurrency", 64))
    api_key = os.environ.get(API_KEY_ENV) or None
    model_name, model_version = str(manifest["name"]), str(manifest["version"])
    specs_in = {spec["name"]: spec for spec in manifest["inputs"]}
    input_dtypes = {name: str(spec.get("dtype")) for name, spec in specs_in.items()}
    specs_out = {spec["name"]: spec for spec in manifest["outputs"]}
    preprocessing = manifest.get("preprocessing") or {}
    kind = preprocessing.get("kind")  # "image"/"text": /predict and v2 take encoded images or text too
    encoded_key = preprocessing.get("input")
    media_types = {"image": ("application/json", "multipart/form-data"),
                   "text": ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
                   }.get(kind or "", ("application/json",))  # fmt: skip
    encoded = {encoded_key: kind} if kind and encoded_key else {}
    metrics = Metrics()
    slots = {"busy": 0}
    max_batch = int(serving.get("max_batch_size", 1))
    batching: dict[str, Batcher | None] = {"batcher": None}
    if max_batch > 1 and Batcher.eligible(manifest):
        state.on_ready(lambda rt: batching.update(
            batcher=Batcher(rt, max_batch, float(serving.get("max_queue_delay", 0.002)), metrics)))
    state.on_ready(metrics.self_check)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.status == LOADING:
            def stop() -> None:  # serve() sets app.state.stop: the server shuts down and exits 5
                getattr(app.state, "stop", lambda: None)()

            state.load(lambda: load(bundle_dir), None if stay_unready else stop)
        yield

    app = FastAPI(
        title=f"{model_name} ({target})",
        description="gpuxc bundle server: GPUX API and the Open Inference Protocol (KServe v2)",
        version=model_version,
        lifespan=lifespan,
        **tracing.fastapi_options(),
    )
    app.state.model = state

    app.add_middleware(Guard, api_key=api_key, metrics=metrics)
    if tracing.available():  # outside the key check: refused requests are traced too
        app.add_middleware(tracing.TraceRequests, attributes={tracing.MODEL_NAME: model_name,
                           tracing.MODEL_VERSION: model_version, tracing.TARGET: target})
    if access.enabled():  # outermost: every request is logged, 401s and 413s included
        app.add_middleware(access.AccessLog)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise _TooLarge
        chunks, size = [], 0
        async for chunk in request.stream():  # chunked bodies too: stop at the cap, never buffer past it
            chunks.append(chunk)
            size += len(chunk)
            if size > max_body:
                raise _TooLarge
        return b"".join(chunks)  # one copy at most: none for a body that came in one chunk

    async def run_model(rt: GPUXRuntime, feeds: dict[str, Any]) -> dict[str, Any]:
        """One inference with the concurrency limit, the timeout and the metrics."""
        arrived = time.perf_counter()
        batcher = batching["batcher"]
        if slots["busy"] >= max_concurrency:
            raise _Busy
        slots["busy"] += 1
        if metrics.prom:
            metrics.p_in_flight.inc()
        try:
            if batcher is not None:
                return await asyncio.wait_for(batcher.submit(feeds), timeout=request_timeout)
            started = time.perf_counter()
            outputs, began, ended = await asyncio.wait_for(run_in_threadpool(timed, rt.infer, feeds),
                                                           timeout=request_timeout)
            batch = next((int(v.shape[0]) for v in feeds.values() if getattr(v, "ndim", 0) > 0), 1)
            metrics.inference(time.perf_counter() - started, started - arrived, batch)
            tracing.intervals(("queue", arrived, began, None), ("run", began, ended, {tracing.BATCH_SIZE: batch}))
            tracing.annotate({tracing.BATCH_SIZE: batch})
            return outputs
        finally:
            slots["busy"] -= 1
            if metrics.prom:
                metrics.p_in_flight.dec()

    # -- GPUX --------------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> Any:
        status, body = state.health(model_name, model_version, target)
        return body if status == 200 else JSONResponse(status_code=status, content=body)

    @app.get("/info")
    async def model_info() -> Any:
        if state.rt is None:
            return JSONResponse(status_code=503, content={"name": model_name, "version": model_version,
                                                          "target": target, **state.not_ready_info()})
        return state.rt.get_model_info()  # includes the variant running and its self-check

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Any:
        if metrics.prom and "application/json" not in request.headers.get("accept", ""):
            return Response(metrics.prom.generate_latest(metrics.registry),
                            media_type="text/plain; version=0.0.4; charset=utf-8")
        rt = state.rt
        with metrics.lock:
            requests = [{"endpoint": p, "status": s, "count": c} for (p, s), c in sorted(metrics.requests.items())]
            avg = metrics.inference_ms_total / metrics.inferences if metrics.inferences else None
            count = metrics.inferences
        return {
            "provider": rt.get_provider_info() if rt else None,
            "available_providers": rt.get_available_providers() if rt else [],
            "ready": rt is not None,
            "self_check": rt.self_check_report() if rt else state.not_ready_info(),
            "requests": requests,
            "inferences": count,
            "avg_inference_ms": avg,
            "in_flight": slots["busy"],
            "batching": {"max_batch_size": max_batch, "enabled": batching["batcher"] is not None},
            "uptime_s": time.time() - metrics.started,
        }

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        rt = state.rt
        if rt is None:
            return _gpux_error(503, "not_ready", state.message(), headers={"Retry-After": "1"})
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
            with tracing.span("decode"):
                data = await uploads.predict_inputs(content_type, request.headers, body, kind,
                                                      encoded_key or "", input_dtypes)
                # Decoding an image or tokenising takes milliseconds: off the event loop. Strings are
                # never read as file paths from here (paths=False).
                feeds = (await run_in_threadpool(rt.prepare, data, paths=False) if kind else rt.prepare(data))
            outputs = await run_model(rt, feeds)
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
        with tracing.span("encode"):
            reply = {name: jsontensors.jsonable(value) for name, value in outputs.items()}
            ranked = rt.rank_labels(outputs, int(top_k) if top_k else None)
            if ranked and RANKED_KEY not in reply:  # a model output of that name keeps it
                reply[RANKED_KEY] = ranked
            # Written here, in C when orjson is installed: FastAPI's encoder would walk every element.
            body = jsontensors.dumps(reply, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return Response(body, media_type="application/json")

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
            inputs.append({"name": encoded_key, "datatype": "BYTES", "shape": [-1]})
        return {"name": model_name, "versions": [model_version], "platform": f"gpuxc_{target}",
                "inputs": inputs, "outputs": tensors(specs_out)}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "gpuxc", "version": str(manifest.get("gpuxc_version", "")),
                "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Any:
        if state.rt is None:  # not ready: non-200, as the protocol asks, with the reason
            return JSONResponse(status_code=503, content={"ready": False, "reason": state.message()})
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
        if state.rt is None:
            return JSONResponse(status_code=503, content={"name": model_name, "ready": False,
                                                          "reason": state.message()})
        return {"name": model_name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Any:
        if not model_matches(name, version):
            return _v2_error(404, "unknown model or version")
        rt = state.rt
        if rt is None:
            return _v2_error(503, state.message(), headers={"Retry-After": "1"})
        header_length = request.headers.get(v2.HEADER_LENGTH)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        allowed = ("application/json", "application/octet-stream", "")
        if content_type not in allowed:
            return _v2_error(415, f"unsupported content type '{content_type}'")
        if header_length is None and content_type == "application/octet-stream":
            return _v2_error(400, "binary requests need the Inference-Header-Content-Length header")
        try:
            body = await read_body(request)
            with tracing.span("decode"):
                req, tail = v2.split_body(body, header_length)
                decoded = v2.decode_inputs(req, tail, specs_in, encoded)
                feeds = await run_in_threadpool(rt.prepare, decoded, paths=False) if kind else rt.prepare(decoded)
            outputs = await run_model(rt, feeds)
            with tracing.span("encode"):
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
          provider: str | None = None, log_level: str = "info", self_check: str | None = None,
          stay_unready: bool = False, tls: dict[str, Any] | None = None) -> None:
    """Bind, then load and self-check the model in the background (runner/readiness.py). Raises
    :class:`NoVariant` after shutting down when no variant passed, unless ``stay_unready``.
    ``tls``: uvicorn's ``ssl_*`` arguments, checked beforehand (``runner.tls.ssl_options``)."""
    import uvicorn

    # Worker processes read these too.
    if provider:
        os.environ[PROVIDER_ENV] = provider
    if self_check:
        os.environ[POLICY_ENV] = self_check
    manifest = read_manifest(BUNDLE_DIR)  # an unreadable bundle fails before binding
    serving = manifest.get("serving", {})
    host = host or serving.get("host", "127.0.0.1")
    port = int(port or serving.get("port", 8080))
    workers = int(workers or serving.get("max_workers", 1))
    # On SIGTERM uvicorn stops accepting and lets in-flight requests finish for this long.
    grace = int(max(1, float(serving.get("timeout", 30.0)) + 1))
    if workers > 1:
        # The parent proves once that a variant runs here, then each worker process imports the
        # factory, loads and self-checks the model itself; a worker whose check fails stays not ready.
        if not stay_unready:
            load().cleanup()
        os.environ[STAY_UNREADY_ENV] = "1"
        uvicorn.run("runner.server:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, timeout_graceful_shutdown=grace, access_log=False, **(tls or {}))
        return
    app = create_app(None, stay_unready=stay_unready)
    # access_log=False: runner.access writes the one access log (without query strings).
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=grace, access_log=False,
                                           **(tls or {})))  # fmt: skip
    app.state.stop = lambda: setattr(server, "should_exit", True)
    server.run()
    state: ModelState = app.state.model
    if state.status == FAILED and not stay_unready:
        raise NoVariant(state.reason or "the model failed to load", state.skipped)
