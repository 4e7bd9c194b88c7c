"""Dynamic batching of the bundle server: requests arriving together run as one batch along dim 0."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:
    from runner.api import GPUXRuntime
    from runner.metrics import Metrics


class Batcher:
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
    def eligible(manifest: dict[str, Any]) -> bool:
        """Every input and output has the same symbolic first dim (a batch dimension)."""
        firsts = [(s.get("shape") or [1])[0] for s in manifest["inputs"] + manifest["outputs"]]
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
