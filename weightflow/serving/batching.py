"""Dynamic batching: concurrent requests that can share a forward pass run as one batch.

One dedicated thread runs the model (torch already uses every core per operation; two batches at once
only contend), always the same one: asyncio's default executor hands work to whichever of its threads
is free, and each new caller thread brings its own OpenMP team. While it runs, requests queue; the
next batch takes the oldest request and every queued one with the same key (same endpoint and
decoding parameters), up to `max_batch` inputs: the batch size the deployment's memory budget was
computed for. A lone request waits at most `max_wait_s` for company. A request whose client went
away is dropped before it costs model time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

R = TypeVar("R")
# run(key, inputs) -> (tag, one result per input); the tag says what served them (the manifest id)
Run = Callable[[Hashable, list[Any]], tuple[str, Sequence[R]]]


@dataclass
class _Job(Generic[R]):
    key: Hashable
    items: list[Any]
    future: asyncio.Future[tuple[str, list[R]]] = field(repr=False)


@dataclass
class BatchStats:
    batches: int = 0
    inputs: int = 0
    model_s: float = 0.0  # time inside the model call: set against wall time, how busy the model is


    @property
    def mean_batch(self) -> float:
        return self.inputs / self.batches if self.batches else 0.0


class Batcher(Generic[R]):
    def __init__(self, run: Run[R], *, max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self._queue: deque[_Job[R]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = BatchStats()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightflow-model")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._queue.clear()
        self._model_thread.shutdown(wait=False)

    async def submit(self, key: Hashable, items: Sequence[Any]) -> tuple[str, list[R]]:
        future: asyncio.Future[tuple[str, list[R]]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(key, list(items), future))
        self._wake.set()
        return await future

    def _take(self) -> list[_Job[R]]:
        """The oldest live job and the queued jobs with its key that fit beside it, in arrival order."""
        while self._queue and self._queue[0].future.done():  # the client went away
            self._queue.popleft()
        if not self._queue:
            return []
        first = self._queue.popleft()
        taken, size, rest = [first], len(first.items), deque[_Job[R]]()
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():
                continue
            if job.key == first.key and size + len(job.items) <= self.max_batch:
                taken.append(job)
                size += len(job.items)
            else:
                rest.append(job)
        self._queue = rest
        return taken

    def _ready(self) -> int:
        if not self._queue:
            return 0
        key = self._queue[0].key
        return sum(len(j.items) for j in self._queue if j.key == key)

    def _timed(self, key: Hashable, inputs: list[Any]) -> tuple[str, Sequence[R]]:
        start = time.perf_counter()
        try:
            return self._run(key, inputs)
        finally:
            self.stats.model_s += time.perf_counter() - start

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if self._ready() < self.max_batch and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)  # let concurrent requests join
            jobs = self._take()
            if not jobs:
                continue
            inputs = [item for job in jobs for item in job.items]
            try:
                tag, results = await asyncio.get_running_loop().run_in_executor(
                    self._model_thread, self._timed, jobs[0].key, inputs)
                if len(results) != len(inputs):
                    raise RuntimeError(f"the model answered {len(results)} of {len(inputs)} inputs")
            except Exception as exc:  # every request of the batch gets the error (they share its cause)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.inputs += len(inputs)
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result((tag, list(results[start: start + len(job.items)])))
                start += len(job.items)
