"""The server's model state: loading, ready or failed, and what /health, /v2/health/ready and /info say.

The server binds first and loads the model on a background thread: loading picks the variant and
runs its self-check (runner/variants.py, runner/selfcheck.py), which for a TensorRT engine or a
large model takes seconds. Meanwhile /v2/health/live answers, and /health and the readiness routes
answer 503 with the state, so an orchestrator sends no traffic to a model that has not proved it
computes the reference outputs on this device. When no variant passes, the server either exits
(the default; ``serve`` returns exit code 5) or, with ``--stay-unready``, keeps answering not
ready with the reasons.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runner.selfcheck import first_line, summary
from runner.variants import skipped_line

if TYPE_CHECKING:
    from runner.api import GPUXRuntime

LOADING, READY, FAILED = "loading", "ready", "failed"


class ModelState:
    """The runtime once loaded, else the state and the reason; read by every route."""

    def __init__(self, runtime: GPUXRuntime | None = None) -> None:
        self.rt = runtime
        self.status = READY if runtime is not None else LOADING
        self.reason: str | None = None
        self.skipped: list[dict[str, Any]] = []
        self.self_check_failed = False
        self.load_seconds: float | None = None
        self._ready_hooks: list[Callable[[GPUXRuntime], None]] = []
        self._lock = threading.Lock()

    def on_ready(self, hook: Callable[[GPUXRuntime], None]) -> None:
        """Call ``hook(runtime)`` once the model is ready (now, if it already is)."""
        with self._lock:
            if self.rt is None:
                self._ready_hooks.append(hook)
                return
        hook(self.rt)

    def load(self, loader: Callable[[], GPUXRuntime], on_failed: Callable[[], None] | None = None) -> None:
        """Load on a daemon thread; ``on_failed`` runs after a failed load (the server shuts down)."""

        def work() -> None:
            started = time.perf_counter()
            try:
                runtime = loader()
            except Exception as exc:
                self.load_seconds = time.perf_counter() - started
                self.reason = first_line(exc)
                self.skipped = list(getattr(exc, "skipped", []))
                self.self_check_failed = bool(getattr(exc, "self_check_failed", False))
                self.status = FAILED
                print(f"gpuxc: model not ready: {self.reason}", file=sys.stderr, flush=True)
                if on_failed is not None:
                    on_failed()
                return
            self.load_seconds = time.perf_counter() - started
            self.ready(runtime)

        threading.Thread(target=work, name="gpuxc-load", daemon=True).start()

    def ready(self, runtime: GPUXRuntime) -> None:
        log_start(runtime, self.load_seconds)
        with self._lock:
            self.rt = runtime
            self.status = READY
            hooks, self._ready_hooks = self._ready_hooks, []
        for hook in hooks:
            hook(runtime)

    def message(self) -> str:
        """Why requests are refused now (503)."""
        if self.status == LOADING:
            return "the model is loading and running its self-check; retry shortly"
        return f"the model is not ready: {self.reason}"

    def health(self, name: str, version: str, target: str) -> tuple[int, dict[str, Any]]:
        """GPUX /health: 200 once ready, else 503 with the state and the reason."""
        body: dict[str, Any] = {"model": name, "version": version, "target": target}
        if self.rt is not None:
            check = self.rt.self_check_report()
            return 200, {"status": "healthy", **body, "variant": self.rt.variant["target"],
                         "self_check": check["status"]}  # fmt: skip
        if self.status == LOADING:
            return 503, {"status": "loading", **body}
        return 503, {"status": "unhealthy", **body, "reason": self.reason, "skipped_variants": self.public_skipped()}

    def not_ready_info(self) -> dict[str, Any]:
        """/info before the model is ready: the state, and each variant skipped with its self-check."""
        return {"status": self.status, "reason": self.reason if self.status == FAILED else self.message(),
                "skipped_variants": self.public_skipped(), "load_seconds": self.load_seconds}  # fmt: skip

    def public_skipped(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.skipped]


def log_start(runtime: GPUXRuntime, load_seconds: float | None) -> None:
    """The start-up lines of the log: variants skipped, the self-check and what it cost."""
    for skipped in runtime.skipped_variants:
        print(skipped_line(skipped), file=sys.stderr, flush=True)
    check = runtime.self_check_report()
    line = summary(check) if "seconds" in check else f"self-check {check['status']}: {check['reason']}"
    took = f" (loaded in {load_seconds:.3f} s)" if load_seconds is not None else ""
    print(f"gpuxc: serving variant {runtime.variant['target']}; {line}{took}", file=sys.stderr, flush=True)
