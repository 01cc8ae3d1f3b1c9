"""Micro-batching: concurrent requests share one model call, which runs off the event loop.

The first waiting request opens a batch; it closes when ``max_batch`` requests are in or
``max_wait_s`` has passed, and runs on a single worker thread (one model call at a time: torch
already uses every core inside a call). Requests arriving meanwhile queue for the next batch, so
under load batches fill without waiting and a lone request waits at most ``max_wait_s``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any


class MicroBatcher:
    """Collects items from concurrent coroutines into batches for ``fn``.

    Args:
        fn: called in the worker thread with a list of items; returns one result per item, in
            order. A result that is an ``Exception`` is raised in that item's caller; an exception
            raised by ``fn`` itself is raised in every caller of the batch.
        max_batch: most items per call.
        max_wait_s: how long an open batch waits for more items.
    """

    def __init__(
        self, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int = 8, max_wait_s: float = 0.005
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be ≥ 0, got {max_wait_s}")
        self.fn, self.max_batch, self.max_wait_s = fn, int(max_batch), float(max_wait_s)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.batches = 0  # calls of fn so far
        self.items = 0  # items through fn so far

    async def start(self) -> None:
        """Start the collecting task on the running loop (idempotent)."""
        if self._task is None:
            self._queue = asyncio.Queue()
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netvlad-model")
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop collecting; callers still waiting get a RuntimeError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(RuntimeError("the service is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    async def submit(self, item: Any) -> Any:
        """Queue ``item`` and wait for its result."""
        if self._task is None:
            await self.start()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a caller that gave up
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._pool, self.fn, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(
                        f"batch function returned {len(results)} results for {len(live)} items"
                    )
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
                results = [exc] * len(live)
            self.batches += 1
            self.items += len(live)
            for (_, fut), res in zip(live, results):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
