"""Adaptive micro-batching for the JSON predict routes.

No fixed wait window: while the model runs one batch, the requests that arrive queue up and
become the next batch. At concurrency 1 a request never waits for company (no added latency);
under load, batches grow by themselves and the per-request model and thread-hop cost shrinks.
The queue is bounded: beyond it the route answers 503 with Retry-After instead of letting
latency grow without limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Models faster than this run on the event loop: a thread hop would cost more than it frees.
INLINE_BELOW_S = 0.002


class Overloaded(RuntimeError):
    """The batch queue is full; the client should retry later (503)."""


class MicroBatcher:
    """Run ``run(batch) -> rows`` on stacked requests, one model call at a time."""

    def __init__(
        self,
        run: Callable[[Any], list[Any]],
        *,
        max_batch_rows: int = 512,
        max_queue: int = 1024,
        inline: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._max_rows = max_batch_rows
        self._max_queue = max_queue
        # inline: the model is so fast that a thread hop costs more than it blocks the loop.
        self._inline = inline
        self._on_batch = on_batch
        self._pending: deque[tuple[np.ndarray, asyncio.Future[list[Any]]]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = None if inline else ThreadPoolExecutor(1, thread_name_prefix="model")

    async def submit(self, batch: np.ndarray) -> list[Any]:
        if len(self._pending) >= self._max_queue:
            raise Overloaded(f"{len(self._pending)} requests are queued")
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._consume())
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, future))
        assert self._wake is not None
        self._wake.set()
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[list[Any]]]]:
        # Stack only requests whose rows match the first one (same trailing shape and dtype).
        first = self._pending.popleft()
        taken, rows = [first], len(first[0])
        key = (first[0].shape[1:], first[0].dtype)
        while self._pending and rows < self._max_rows:
            batch = self._pending[0][0]
            if (batch.shape[1:], batch.dtype) != key or rows + len(batch) > self._max_rows:
                break
            taken.append(self._pending.popleft())
            rows += len(batch)
        return taken

    async def _consume(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            taken = [t for t in self._take() if not t[1].cancelled()]
            if not taken:
                continue
            stacked = taken[0][0] if len(taken) == 1 else np.concatenate([t[0] for t in taken])
            if self._on_batch is not None:
                self._on_batch(len(taken))
            try:
                if self._inline:
                    out = self._run(stacked)
                else:
                    out = await loop.run_in_executor(self._executor, self._run, stacked)
                if len(taken) > 1 and len(out) != len(stacked):
                    raise RuntimeError(
                        f"the model returned {len(out)} outputs for {len(stacked)} rows; "
                        "it cannot be batched"
                    )
            except Exception as e:  # the model failed: every request in the batch learns it
                logger.exception("model call failed on a batch of %d rows", len(stacked))
                for _, fut in taken:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            start = 0
            for batch, fut in taken:
                if not fut.done():
                    fut.set_result(out[start : start + len(batch)])
                start += len(batch)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def is_fast(predictor: Any, below_s: float = INLINE_BELOW_S) -> bool:
    """Time one call on the manifest's example (if any) to pick inline vs. thread."""
    example = predictor.manifest.get("example")
    shape = predictor.input_spec.shape
    try:
        if example:
            batch = predictor.prepare(example)
        elif shape and all(d > 0 for d in shape[1:]):
            batch = np.zeros((1, *shape[1:]), dtype=predictor.input_spec.dtype or "float64")
        else:
            return False
        predictor.run(batch)  # warm-up
        started = time.perf_counter()
        predictor.run(batch)
        return time.perf_counter() - started < below_s
    except Exception:
        return False
