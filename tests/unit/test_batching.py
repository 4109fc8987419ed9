"""The dynamic batcher on its own (no HTTP): who shares a pass, who gets which answer, errors, stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable

import pytest

from weightflow.serving.batching import Abandoned, Batcher, NotRunning


class Model:
    """Doubles its inputs. Its first pass signals `entered` and then holds at `gate`, so that requests
    pile up behind it; `fail_on` an input raises, `die_on` one ends the thread (not an Exception)."""

    def __init__(self, *, fail_on: int | None = None, die_on: int | None = None, gated: bool = True) -> None:
        self.calls: list[tuple[Hashable, list[int]]] = []
        self.entered, self.gate = threading.Event(), threading.Event()
        if not gated:
            self.gate.set()
        self.fail_on, self.die_on = fail_on, die_on

    def __call__(self, key: Hashable, inputs: list[int]) -> tuple[str, list[int]]:
        if not self.calls:
            self.entered.set()
            self.gate.wait(10)
        self.calls.append((key, list(inputs)))
        if self.fail_on in inputs:
            raise ValueError(f"cannot take {self.fail_on}")
        if self.die_on in inputs:
            raise SystemExit("the model thread ends")
        return "m1", [2 * x for x in inputs]

    async def running(self) -> None:
        """Until the first pass is inside the model (no sleeping and hoping)."""
        assert await asyncio.to_thread(self.entered.wait, 10)


def started(model: Model, *, max_batch: int = 4, max_wait_s: float = 0.0) -> Batcher[int]:
    batcher: Batcher[int] = Batcher(model, max_batch=max_batch, max_wait_s=max_wait_s)
    batcher.start()
    return batcher


def test_requests_queued_behind_a_pass_share_the_next_one_and_get_their_own_answers() -> None:
    async def go() -> None:
        model = Model()
        batcher = started(model, max_batch=4)
        first = asyncio.ensure_future(batcher.submit("a", [0]))
        await model.running()
        rest = [asyncio.ensure_future(batcher.submit("a", [i, 10 + i])) for i in (1, 2, 3)]
        other = asyncio.ensure_future(batcher.submit("b", [7]))  # another key never shares a pass
        await asyncio.sleep(0)  # the submissions are queued
        model.gate.set()
        assert await first == ("m1", [0])
        assert [await r for r in rest] == [("m1", [2, 22]), ("m1", [4, 24]), ("m1", [6, 26])]
        assert await other == ("m1", [14])
        await batcher.stop()
        # 4 inputs per pass at most, arrival order kept, keys apart
        assert model.calls == [("a", [0]), ("a", [1, 11, 2, 12]), ("a", [3, 13]), ("b", [7])]
        assert batcher.stats.batches == 4 and batcher.stats.inputs == 8 and batcher.stats.model_s > 0

    asyncio.run(go())


def test_a_failing_pass_fails_every_request_in_it_and_the_next_pass_runs() -> None:
    async def go() -> None:
        model = Model(fail_on=5)
        batcher = started(model, max_batch=8)
        first = asyncio.ensure_future(batcher.submit("a", [0]))
        await model.running()
        failing = [asyncio.ensure_future(batcher.submit("a", [i])) for i in (4, 5)]
        await asyncio.sleep(0)
        model.gate.set()
        await first
        for job in failing:  # they shared the pass that failed
            with pytest.raises(ValueError, match="cannot take 5"):
                await job
        assert await batcher.submit("a", [6]) == ("m1", [12])
        await batcher.stop()

    asyncio.run(go())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_model_thread_that_dies_fails_its_requests_instead_of_leaving_them_waiting() -> None:
    async def go() -> None:
        model = Model(die_on=9)
        batcher = started(model)
        first = asyncio.ensure_future(batcher.submit("a", [0]))
        await model.running()
        dying = asyncio.ensure_future(batcher.submit("a", [9]))
        queued = asyncio.ensure_future(batcher.submit("b", [1]))  # queued behind the pass that ends the thread
        await asyncio.sleep(0)
        model.gate.set()
        await first
        for job in (dying, queued):
            with pytest.raises(NotRunning, match="model thread stopped"):
                await asyncio.wait_for(job, 10)
        with pytest.raises(NotRunning):
            await batcher.submit("a", [2])
        await batcher.stop()

    asyncio.run(go())


def test_a_request_whose_client_went_away_costs_no_model_time() -> None:
    async def go() -> None:
        model = Model()
        batcher = started(model)
        first = asyncio.ensure_future(batcher.submit("a", [0]))
        await model.running()
        gone = asyncio.ensure_future(batcher.submit("a", [99]))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        model.gate.set()
        await first
        assert await batcher.submit("a", [1]) == ("m1", [2])
        await batcher.stop()
        assert all(99 not in inputs for _, inputs in model.calls)

    asyncio.run(go())


def test_a_caller_that_leaves_while_queued_is_abandoned_and_costs_no_model_time() -> None:
    """`gone` is how the server says its HTTP client disconnected; the caller's own cancellation stays a
    cancellation; a watcher outlives no answer."""
    async def go() -> None:
        model = Model()
        batcher = started(model)
        first = asyncio.ensure_future(batcher.submit("a", [0]))
        await model.running()
        leaves, stays = asyncio.Event(), asyncio.Event()
        left = asyncio.ensure_future(batcher.submit("a", [99], gone=leaves.wait))
        kept = asyncio.ensure_future(batcher.submit("a", [5], gone=stays.wait))
        cancelled = asyncio.ensure_future(batcher.submit("a", [77], gone=asyncio.Event().wait))

        async def broken_watch() -> None:
            raise OSError("cannot read the connection")

        broken = asyncio.ensure_future(batcher.submit("a", [6], gone=broken_watch))  # not a departure: answered
        await asyncio.sleep(0)
        assert batcher.queued == 4
        leaves.set()
        with pytest.raises(Abandoned):
            await left
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert batcher.queued == 2
        model.gate.set()
        assert await first == ("m1", [0])
        assert await kept == ("m1", [10])
        assert await broken == ("m1", [12])
        stays.set()  # after its answer: nothing happens
        await asyncio.sleep(0)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        await batcher.stop()
        assert model.calls == [("a", [0]), ("a", [5, 6])]

    asyncio.run(go())


def test_a_lone_request_waits_at_most_max_wait_for_company_and_a_full_batch_not_at_all() -> None:
    async def go() -> None:
        model = Model(gated=False)
        batcher = started(model, max_batch=2, max_wait_s=0.3)
        one = asyncio.ensure_future(batcher.submit("a", [1]))
        await asyncio.sleep(0.02)
        two = asyncio.ensure_future(batcher.submit("a", [2]))
        assert (await one, await two) == (("m1", [2]), ("m1", [4]))
        assert model.calls == [("a", [1, 2])], "the second request joined the first one's pass"
        start = time.perf_counter()
        assert await batcher.submit("a", [3]) == ("m1", [6])  # nobody comes: it goes alone
        assert 0.25 < time.perf_counter() - start < 5
        start = time.perf_counter()
        assert await batcher.submit("a", [4, 5]) == ("m1", [8, 10])  # a full batch goes at once
        assert time.perf_counter() - start < 0.25
        await batcher.stop()

    asyncio.run(go())


def test_stop_fails_what_still_queues_and_refuses_new_work() -> None:
    async def go() -> None:
        model = Model()
        batcher = started(model)
        running = asyncio.ensure_future(batcher.submit("a", [0]))
        await model.running()
        queued = asyncio.ensure_future(batcher.submit("b", [1]))
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(batcher.stop())  # waits for the running pass
        await asyncio.sleep(0.05)
        with pytest.raises(NotRunning, match="shutting down"):
            await queued
        with pytest.raises(NotRunning, match="not running"):
            await batcher.submit("a", [2])
        assert not stopping.done()
        model.gate.set()  # the pass that was running still answers its request
        assert await running == ("m1", [0])
        await stopping

    asyncio.run(go())
