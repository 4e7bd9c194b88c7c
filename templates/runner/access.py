"""The server's access log: one line per request on the ``gpuxc.access`` logger (stderr).

It replaces uvicorn's own access log so that there is one format. A line holds the time, the
client address, the method, the path, the status, the bytes sent, the duration and the caller's
X-Request-ID; never a request body, never the query string (it may carry data), never a header
other than X-Request-ID (the API key travels in one). ``GPUXC_ACCESS_LOG=0`` turns it off;
``GPUXC_LOG_FORMAT=json`` writes JSON lines. Both are environment variables so that the worker
processes uvicorn spawns (``--workers N``) read them too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any

ACCESS_LOG_ENV = "GPUXC_ACCESS_LOG"
LOG_FORMAT_ENV = "GPUXC_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
LOGGER_NAME = "gpuxc.access"
MAX_REQUEST_ID = 128  # a caller's id longer than this is cut: a log line stays a line


def enabled() -> bool:
    return os.environ.get(ACCESS_LOG_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def log_format() -> str:
    value = os.environ.get(LOG_FORMAT_ENV, "text").strip().lower()
    return value if value in LOG_FORMATS else "text"


def logger() -> logging.Logger:
    """``gpuxc.access``, writing bare lines to stderr unless the embedding program set handlers."""
    log = logging.getLogger(LOGGER_NAME)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False  # one line, not a second one through the root logger
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    return log


def _printable(text: str, limit: int | None = None) -> str:
    """Control characters escaped: a path like ``/a%0Afake-line`` cannot forge a second log line."""
    text = text[:limit] if limit else text
    return "".join(c if c.isprintable() and c != " " else f"\\x{ord(c):02x}" for c in text)


def format_line(record: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(record, ensure_ascii=True)
    rid = f" rid={record['request_id']}" if record["request_id"] else ""
    return (f"{record['time']} {record['client']} {record['method']} {record['path']} {record['status']} "
            f"{record['bytes']}B {record['duration_ms']:.1f}ms{rid}")  # fmt: skip


class AccessLog:
    """Plain ASGI middleware (as ``metrics.Guard``): it sees only the response's status and sizes."""

    def __init__(self, app: Any, fmt: str | None = None) -> None:
        self.app, self.fmt, self.log = app, fmt or log_format(), logger()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wall, start = time.time(), time.perf_counter()
        status, sent = [500], [0]

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                sent[0] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.log.info(format_line(self._record(scope, wall, start, status[0], sent[0]), self.fmt))

    @staticmethod
    def _record(scope: dict[str, Any], wall: float, start: float, status: int, sent: int) -> dict[str, Any]:
        client = scope.get("client")
        rid = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), "")
        stamp = datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "time": stamp,
            "client": f"{client[0]}:{client[1]}" if client else "-",
            "method": _printable(str(scope.get("method", "-"))),
            "path": _printable(str(scope.get("path", ""))),  # scope["path"] never holds the query string
            "status": status,
            "bytes": sent,
            "duration_ms": round((time.perf_counter() - start) * 1000.0, 3),
            "request_id": _printable(rid, MAX_REQUEST_ID),
        }
