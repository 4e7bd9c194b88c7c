"""The server's request metrics and the middleware that counts them (and checks the API key).

GPUX's JSON counters (``/metrics`` as JSON) always; Prometheus metrics too when
prometheus-client is installed. Endpoint labels are bounded: never the raw path.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import Counter
from typing import Any

from fastapi.responses import JSONResponse

# Reachable without the API key: load balancers and orchestrators probe these.
OPEN_PATHS = ("/health", "/v2/health/live", "/v2/health/ready")


class Metrics:
    """Prometheus metrics when prometheus-client is installed, and GPUX's JSON counters always."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.inferences = 0
        self.inference_ms_total = 0.0
        self.in_flight = 0
        self.started = time.time()
        try:
            import prometheus_client as prom
        except ImportError:
            self.prom = None
            return
        self.prom = prom
        self.registry = prom.CollectorRegistry()
        self.p_requests = prom.Counter("gpuxc_requests", "HTTP requests", ["endpoint", "status"],
                                       registry=self.registry)
        self.p_latency = prom.Histogram("gpuxc_request_seconds", "Request latency", ["endpoint"],
                                        registry=self.registry)
        self.p_inference = prom.Histogram("gpuxc_inference_seconds", "Model run time", registry=self.registry)
        self.p_queue = prom.Histogram("gpuxc_queue_seconds", "Time from arrival to the start of the run",
                                      registry=self.registry)
        self.p_batch = prom.Histogram("gpuxc_batch_size", "Leading dimension of the inputs run",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.p_in_flight = prom.Gauge("gpuxc_in_flight", "Inferences running now", registry=self.registry)
        # The start-up self-check (runner/selfcheck.py): set once the model is ready.
        self.p_self_check = prom.Gauge("gpuxc_self_check_passed", "1: the reference outputs were reproduced "
                                       "within tolerance on this device at start; 0: not checked",
                                       ["variant", "provider", "status"], registry=self.registry)  # fmt: skip
        self.p_self_check_seconds = prom.Gauge("gpuxc_self_check_seconds", "Time the start-up self-check took",
                                               registry=self.registry)  # fmt: skip

    def self_check(self, runtime: Any) -> None:
        """Record the ready runtime's self-check (/metrics reads the report itself for JSON)."""
        if not self.prom:
            return
        report = runtime.self_check_report()
        provider = str(report.get("provider") or runtime.get_provider_info().get("name") or "")
        self.p_self_check.labels(report.get("target", ""), provider, report["status"]).set(
            1 if report["status"] == "passed" else 0)
        self.p_self_check_seconds.set(float(report.get("seconds", 0.0)))

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1
        if self.prom:
            self.p_requests.labels(endpoint, str(status)).inc()
            self.p_latency.labels(endpoint).observe(seconds)

    def inference(self, seconds: float, queued: float, batch: int) -> None:
        with self.lock:
            self.inferences += 1
            self.inference_ms_total += seconds * 1000.0
        if self.prom:
            self.p_inference.observe(seconds)
            self.p_queue.observe(queued)
            self.p_batch.observe(batch)


class Guard:
    """API key check and request metrics, as plain ASGI middleware.

    (Starlette's ``@app.middleware("http")`` wraps every body in extra streams and tasks:
    measurable on large tensor uploads.)
    """

    def __init__(self, app: Any, api_key: str | None, metrics: Metrics) -> None:
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        if self.api_key and path not in OPEN_PATHS:
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
            if not hmac.compare_digest(given, self.api_key.encode()):
                reply = JSONResponse(status_code=401, content={"error": "missing or wrong API key"},
                                     headers={"WWW-Authenticate": "Bearer"})
                await reply(scope, receive, send)
                self.metrics.request(endpoint_label(path), 401, time.perf_counter() - start)
                return
        status = [500]

        async def send_with_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, send_with_status)
        self.metrics.request(endpoint_label(path), status[0], time.perf_counter() - start)


def endpoint_label(path: str) -> str:
    """A bounded label for metrics: never the raw path (it may hold arbitrary text)."""
    if path in ("/predict", "/health", "/info", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"):
        return path
    if path.startswith("/v2/models/"):
        return "/v2/models/infer" if path.endswith("/infer") else "/v2/models"
    return "other"
