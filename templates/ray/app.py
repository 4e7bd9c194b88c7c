"""Ray Serve application of a gpuxc bundle (written by ``gpuxc export ray``; docs/deploy.md).

Copied verbatim into the export: nothing about the model is written into this file. What varies
(the bundle folder, batching, deployment options) is read at import time from ``gpuxc-ray.json``
beside it, and serve.yaml may override the deployment options.

Each replica loads the bundle's own runner (``runner.api.GPUXRuntime``: variant selection and the
start-up self-check) and serves the runner's FastAPI app (GPUX /predict /health /info /metrics and
the v2 routes) through ``@serve.ingress``. Requests are batched by Ray (``@serve.batch``) when the
bundle batches (serving.max_batch_size > 1 and a batch dim). ``check_health`` fails unless the
runtime is loaded and its self-check passed (or was not required), so Ray replaces such a replica.

The runner is imported inside the replica only: importing this module (``serve run``, a driver)
needs Ray and the standard library, not the bundle's runtime.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
from pathlib import Path
from typing import Any

from ray import serve

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "gpuxc-ray.json").read_text(encoding="utf-8"))
BUNDLE_DIR = HERE / CONFIG["bundle"]
BATCH = CONFIG["batching"]  # {"max_batch_size": int, "batch_wait_timeout_s": float} or None
HEALTHY_SELF_CHECK = ("passed", "off", "not needed")


def _rows(items: list[dict[str, Any]]) -> int:
    """Ray's batch size counts rows along dim 0, not requests: a request may carry several."""
    return sum(int(next(iter(feeds.values())).shape[0]) for feeds in items)


class _RayBatched:
    """The runtime as the runner's app sees it, with ``infer`` going through Ray's batch queue.

    The app calls ``infer`` from a worker thread; the call hops onto the replica's event loop,
    where ``@serve.batch`` collects it. Its manifest copy says max_batch_size 1 so that the app's
    own batcher stays off: Ray batches, once.
    """

    def __init__(self, rt: Any, batched: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._rt, self._batched, self._loop = rt, batched, loop
        self.manifest = copy.deepcopy(rt.manifest)
        self.manifest.setdefault("serving", {})["max_batch_size"] = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rt, name)

    def infer(self, input_data: Any) -> Any:
        # The app hands over feeds it already prepared (``rt.prepare``): arrays with a batch dim.
        # Anything else runs on its own.
        if not isinstance(input_data, dict) or not input_data or not all(
                getattr(v, "ndim", 0) > 0 for v in input_data.values()):
            return self._rt.infer(input_data)
        result = asyncio.run_coroutine_threadsafe(self._batched(input_data), self._loop).result()
        if isinstance(result, Exception):  # this request's own failure, after its batch was split
            raise result
        return result


@serve.deployment(name="bundle")
@serve.ingress()
class GpuxcBundle:
    """One replica: the bundle's runtime, loaded and self-checked, behind the runner's app."""

    def __init__(self) -> None:
        sys.path.insert(0, str(BUNDLE_DIR))  # the bundle's ``runner`` package
        from runner.api import load

        # A bundle that cannot run here (no variant loads or passes its self-check) raises: Ray
        # reports the replica as failed to start and retries, never serving wrong numbers.
        self.rt = load(BUNDLE_DIR)

    async def __serve_build_asgi_app__(self) -> Any:
        from runner.server import create_app

        runtime: Any = self.rt
        if BATCH:
            runtime = _RayBatched(self.rt, self._batched, asyncio.get_running_loop())
        return create_app(runtime, bundle_dir=BUNDLE_DIR)

    @serve.batch(max_batch_size=int((BATCH or {}).get("max_batch_size", 1)),
                 batch_wait_timeout_s=float((BATCH or {}).get("batch_wait_timeout_s", 0.0)),
                 batch_size_fn=_rows)  # fmt: skip
    async def _batched(self, items: list[dict[str, Any]]) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(None, self._run_batch, items)

    def _run_batch(self, items: list[dict[str, Any]]) -> list[Any]:
        """Requests with the same non-batch dims and dtypes run as one; each gets its own rows back.
        A batch that fails is re-run request by request, so one bad request fails only itself."""
        import numpy as np

        results: list[Any] = [None] * len(items)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, feeds in enumerate(items):
            key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(feeds.items()))
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            try:
                joined = {name: np.concatenate([items[i][name] for i in members]) for name in items[members[0]]}
                outputs = self.rt.infer(joined)
            except Exception:
                for i in members:
                    try:
                        results[i] = self.rt.infer(items[i])
                    except Exception as exc:  # handed back to that request's caller, raised there
                        results[i] = exc
                continue
            offset = 0
            for i in members:
                rows = int(next(iter(items[i].values())).shape[0])
                results[i] = {name: value[offset:offset + rows] for name, value in outputs.items()}
                offset += rows
        return results

    def check_health(self) -> None:
        """Ray calls this every health_check_period_s; raising marks the replica unhealthy."""
        rt = getattr(self, "rt", None)
        if rt is None:
            raise RuntimeError("the bundle's runtime is not loaded")
        status = rt.self_check_report().get("status")
        if status not in HEALTHY_SELF_CHECK:
            raise RuntimeError(f"the bundle's self-check did not pass here: {status}")


app = GpuxcBundle.options(**CONFIG["deployment"]).bind()  # type: ignore[attr-defined]  # a Deployment now
