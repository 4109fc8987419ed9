"""Dynamic batching: concurrent requests that can share a forward pass run as one batch.

One dedicated thread runs the model (torch already uses every core per operation; two batches at once
only contend), always the same one (each new caller thread brings its own OpenMP team). The model
thread takes its next batch itself as soon as one finishes, rather than waiting for the event loop to
hand it one: under load the event loop is busy with HTTP, and every millisecond it takes to get round
to the batcher is a millisecond the model idles. While a batch runs, requests queue; the next batch
takes the oldest request and every queued one with the same key (same endpoint and decoding
parameters), up to `max_batch` inputs: the batch size the deployment's memory budget was computed for.
A lone request waits at most `max_wait_s` for company. A request whose caller went away (its task
cancelled, or the `gone` awaitable it was submitted with finished: the HTTP client disconnected) is
dropped before it costs model time; under overload, clients that time out and retry would otherwise
have the model run every abandoned copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry import trace

log = logging.getLogger("weightflow.serve")
_TRACER = trace.get_tracer("weightflow.serve")
R = TypeVar("R")
# run(key, inputs) -> (tag, one result per input); the tag says what served them (the manifest id)
Run = Callable[[Hashable, list[Any]], tuple[str, Sequence[R]]]


def _batch_trace(callers: list[trace.SpanContext]) -> dict[str, Any]:
    """A pass for one request is part of its trace; a pass for several (several traces) links to each
    request's span, as OpenTelemetry prescribes for batches. The model's own span (task.*) sits inside."""
    if len(callers) == 1:
        return {"context": trace.set_span_in_context(trace.NonRecordingSpan(callers[0]))}
    return {"links": [trace.Link(c) for c in callers]}


class NotRunning(RuntimeError):
    """The batcher takes no work: the server is starting or stopping, or its model thread has died."""


class Abandoned(Exception):
    """The caller went away before its answer: its inputs were dropped from the queue (or, if their
    batch was already running, its results are)."""


@dataclass
class _Job(Generic[R]):
    key: Hashable
    items: list[Any]
    future: asyncio.Future[tuple[str, list[R]]] = field(repr=False)
    caller: trace.SpanContext | None = field(default=None, repr=False)  # the request's span, linked from the batch


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
        self._queue: deque[_Job[R]] = deque()  # guarded by _changed's lock: the model thread takes from it
        self._changed = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = BatchStats()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name="weightflow-model", daemon=True)
        self._thread.start()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Fail what still queues, then give the batch that is running `grace_s` to finish (a thread
        cannot be interrupted; torch running while the interpreter exits can crash it)."""
        self._fail(self._close(), NotRunning("the server is shutting down"))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, grace_s)

    def _close(self) -> list[_Job[R]]:
        """Take no more work (a waiting model thread wakes and ends); what still queued, to be failed."""
        with self._changed:
            self._stopping = True
            left, self._queue = list(self._queue), deque()
            self._changed.notify()
        return left

    @property
    def queued(self) -> int:
        """Requests waiting for a pass (not counting the one running)."""
        with self._changed:
            return sum(1 for job in self._queue if not job.future.done())

    async def submit(self, key: Hashable, items: Sequence[Any], *,
                     gone: Callable[[], Awaitable[object]] | None = None) -> tuple[str, list[R]]:
        """The tag and one result per item. `gone()` returns once the caller has left (an HTTP client
        disconnecting): the request is then dropped and `Abandoned` raised."""
        if self._loop is None or self._stopping or self._thread is None or not self._thread.is_alive():
            raise NotRunning("the model is not running (the server is starting or stopping)")
        future: asyncio.Future[tuple[str, list[R]]] = self._loop.create_future()
        watcher = None if gone is None else asyncio.ensure_future(gone())  # before queueing: gone() may raise
        with self._changed:
            self._queue.append(_Job(key, list(items), future, trace.get_current_span().get_span_context()))
            self._changed.notify()
        if watcher is None:
            return await future

        def left(w: asyncio.Future[object]) -> None:
            if w.cancelled():
                return
            if (exc := w.exception()) is not None:  # the watch broke, not the caller: keep waiting
                log.warning("cannot tell whether the caller is still there: %r", exc)
                return
            future.cancel()  # it returned: nobody waits for this answer any more

        watcher.add_done_callback(left)
        try:
            return await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this caller itself was cancelled
                raise
            raise Abandoned("the caller went away before its answer") from None
        finally:
            watcher.remove_done_callback(left)
            watcher.cancel()

    # -- on the model thread ------------------------------------------------------------------
    def _take(self) -> list[_Job[R]]:
        """The oldest live job and the queued jobs with its key that fit beside it, in arrival order.
        Called with the lock held. (`done()` read from this thread is a benign race: a job cancelled
        just after is answered to nobody.)"""
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
        live = [j for j in self._queue if not j.future.done()]
        return sum(len(j.items) for j in live if j.key == live[0].key) if live else 0

    def _next(self) -> list[_Job[R]] | None:
        """The next batch, waiting for work; None once stopping."""
        with self._changed:
            while not self._queue and not self._stopping:
                self._changed.wait()
            if self._stopping:
                return None
            if self.max_wait_s > 0 and self._ready() < self.max_batch:  # let concurrent requests join
                self._changed.wait_for(lambda: self._stopping or self._ready() >= self.max_batch,
                                       timeout=self.max_wait_s)
            return self._take()

    def _work(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # nothing may leave requests waiting on a thread that is gone
            log.exception("the model thread stopped")
            self._back(self._fail, self._close(), NotRunning(f"the model thread stopped: {exc!r}"))
            raise

    def _serve(self) -> None:
        while (jobs := self._next()) is not None:
            if not jobs:
                continue
            inputs = [item for job in jobs for item in job.items]
            start = time.perf_counter()
            callers = [job.caller for job in jobs if job.caller is not None and job.caller.is_valid]
            try:
                with _TRACER.start_as_current_span("serve.batch", **_batch_trace(callers),
                                                   attributes={"weightflow.batch.inputs": len(inputs),
                                                               "weightflow.batch.requests": len(jobs)}):
                    tag, results = self._run(jobs[0].key, inputs)
                if len(results) != len(inputs):
                    raise RuntimeError(f"the model answered {len(results)} of {len(inputs)} inputs")
            except Exception as exc:  # every request of the batch gets the error (they share its cause)
                self._back(self._fail, jobs, exc)
                continue
            except BaseException as exc:  # ...and so does a batch that ends the thread
                self._back(self._fail, jobs, NotRunning(f"the model thread stopped: {exc!r}"))
                raise
            finally:
                self.stats.model_s += time.perf_counter() - start
            self.stats.batches += 1
            self.stats.inputs += len(inputs)
            # after any streamed pieces the run queued: the loop runs callbacks in order
            self._back(self._answer, jobs, tag, results)

    def _back(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed while the last batch ran: nobody waits
            self._loop.call_soon_threadsafe(fn, *args)

    # -- back on the event loop -----------------------------------------------------------------
    @staticmethod
    def _answer(jobs: list[_Job[R]], tag: str, results: Sequence[R]) -> None:
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result((tag, list(results[start: start + len(job.items)])))
            start += len(job.items)

    @staticmethod
    def _fail(jobs: list[_Job[R]], exc: BaseException) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)
