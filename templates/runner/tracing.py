"""OpenTelemetry traces of the server's requests, when ``opentelemetry-api`` is installed.

Each HTTP request gets a SERVER span named after its route template (``POST
/v2/models/{name}/infer``, never the raw path), whose parent is the caller's W3C ``traceparent``
when one is sent; inference requests get child spans ``decode``, ``queue``, ``run`` and
``encode``. The user installs an SDK and an exporter and configures them (for example with
``opentelemetry-instrument``); without the package every call here is a no-op on a shared null
context, and nothing is imported.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

TRACER_NAME = "gpuxc.runner"
# Attribute names of gpuxc's own (OpenTelemetry's semantic conventions have none for these).
MODEL_NAME, MODEL_VERSION, TARGET, BATCH_SIZE = ("gpuxc.model.name", "gpuxc.model.version", "gpuxc.target",
                                                 "gpuxc.batch_size")  # fmt: skip
_NULL: AbstractContextManager[None] = contextlib.nullcontext()

try:
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # optional: the bundle's requirements do not include it
    _trace = None  # type: ignore[assignment]
    _propagate = None  # type: ignore[assignment]
    _context = None  # type: ignore[assignment]


def available() -> bool:
    return _trace is not None


def fastapi_options() -> dict[str, Any]:
    """``FastAPI(...)`` arguments. Recent FastAPI versions open a SERVER span of their own once a
    tracer provider is set; ours replaces it (the model's attributes, never the query string, which
    may carry data), so that each request has one. Older versions have no such argument."""
    import inspect

    from fastapi import FastAPI

    if _trace is None or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False}}


def _tracer() -> Any:
    # Looked up per use: a tracer provider configured after the app was created is still honoured.
    return _trace.get_tracer(TRACER_NAME)


def span(name: str) -> AbstractContextManager[Any]:
    """A child span of the current one (``with tracing.span("decode"):``)."""
    if _trace is None:
        return _NULL
    return _tracer().start_as_current_span(name)


def intervals(*stretches: tuple[str, float, float, dict[str, Any] | None]) -> None:
    """Child spans ``(name, began, ended, attributes)`` for stretches measured elsewhere, in
    ``time.perf_counter()`` seconds: the wait in the queue and the run happen in a worker thread or
    the batcher's task, not in this context. One clock offset for all, so that adjacent stretches
    stay adjacent."""
    if _trace is None:
        return
    now_ns, now = time.time_ns(), time.perf_counter()
    tracer = _tracer()
    for name, began, ended, attributes in stretches:
        started = tracer.start_span(name, start_time=now_ns - int((now - began) * 1e9), attributes=attributes)
        started.end(end_time=now_ns - int((now - ended) * 1e9))


def annotate(attributes: dict[str, Any]) -> None:
    """Attributes on the current span (the request's, outside any child span)."""
    if _trace is not None:
        current = _trace.get_current_span()
        if current.is_recording():
            current.set_attributes(attributes)


def route_name(scope: dict[str, Any]) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return f"{scope.get('method', 'HTTP')} {path}" if isinstance(path, str) else None


class TraceRequests:
    """ASGI middleware: the SERVER span of each HTTP request, with the model's attributes."""

    def __init__(self, app: Any, attributes: dict[str, Any]) -> None:
        self.app, self.attributes = app, attributes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if _trace is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self._server_span(scope) as current:
            status = [500]

            async def send_with_status(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_with_status)
            finally:
                # The router has matched by now: name the span after the route template.
                name = route_name(scope)
                route = getattr(scope.get("route"), "path", None)
                if name:
                    current.update_name(name)
                    current.set_attribute("http.route", route)
                current.set_attribute("http.response.status_code", status[0])
                if status[0] >= 500:
                    current.set_status(_trace.Status(_trace.StatusCode.ERROR))

    @contextlib.contextmanager
    def _server_span(self, scope: dict[str, Any]) -> Iterator[Any]:
        assert _trace is not None and _propagate is not None and _context is not None
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        # The caller's traceparent/tracestate when sent; else the current context (an outer span, if any).
        parent = _propagate.extract(carrier, context=_context.get_current())
        attributes = {"http.request.method": str(scope.get("method", "")), **self.attributes}
        with _tracer().start_as_current_span(str(scope.get("method", "HTTP")), context=parent,
                                             kind=_trace.SpanKind.SERVER, attributes=attributes) as current:
            yield current
