"""The dynamic batcher on its own (no HTTP): who shares a pass, who gets which answer, errors, stop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable

import pytest

from weightflow.serving.batching import Batcher


class Model:
    """Doubles its inputs; `gate` holds the first pass so that requests pile up behind it."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[Hashable, list[int]]] = []
        self.gate = threading.Event()
        self.fail_on = fail_on

    def __call__(self, key: Hashable, inputs: list[int]) -> tuple[str, list[int]]:
        if not self.calls:
            self.gate.wait(10)
        self.calls.append((key, list(inputs)))
        if self.fail_on in inputs:
            raise ValueError(f"cannot take {self.fail_on}")
        return "m1", [2 * x for x in inputs]


async def started(model: Model, **options: float) -> Batcher[int]:
    batcher: Batcher[int] = Batcher(model, max_batch=int(options.pop("max_batch", 4)),
                                    max_wait_s=options.pop("max_wait_s", 0.0))
    batcher.start()
    return batcher


def test_requests_queued_behind_a_pass_share_the_next_one_and_get_their_own_answers() -> None:
    async def go() -> None:
        model = Model()
        batcher = await started(model, max_batch=4)
        first = asyncio.ensure_future(batcher.submit("a", [0]))
        await asyncio.sleep(0.05)  # the model thread holds the first pass at the gate
        rest = [asyncio.ensure_future(batcher.submit("a", [i, 10 + i])) for i in (1, 2, 3)]
        other = asyncio.ensure_future(batcher.submit("b", [7]))  # another key never shares a pass
        await asyncio.sleep(0.05)
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
        model.gate.set()
        batcher = await started(model, max_batch=8)
        results = await asyncio.gather(batcher.submit("a", [5]), return_exceptions=True)
        assert isinstance(results[0], ValueError) and "cannot take 5" in str(results[0])
        assert await batcher.submit("a", [6]) == ("m1", [12])
        await batcher.stop()

    asyncio.run(go())


def test_a_request_whose_client_went_away_costs_no_model_time() -> None:
    async def go() -> None:
        model = Model()
        batcher = await started(model)
        first = asyncio.ensure_future(batcher.submit("a", [0]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit("a", [99]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        model.gate.set()
        await first
        assert await batcher.submit("a", [1]) == ("m1", [2])
        await batcher.stop()
        assert all(99 not in inputs for _, inputs in model.calls)

    asyncio.run(go())


def test_a_lone_request_waits_at_most_max_wait_for_company() -> None:
    async def go() -> None:
        model = Model()
        model.gate.set()
        batcher = await started(model, max_batch=4, max_wait_s=0.2)
        one = asyncio.ensure_future(batcher.submit("a", [1]))
        await asyncio.sleep(0.02)
        two = asyncio.ensure_future(batcher.submit("a", [2]))
        assert (await one, await two) == (("m1", [2]), ("m1", [4]))
        assert model.calls == [("a", [1, 2])], "the second request joined the first one's pass"
        await batcher.stop()

    asyncio.run(go())


def test_stop_fails_what_still_queues_and_refuses_new_work() -> None:
    async def go() -> None:
        model = Model()
        batcher = await started(model)
        running = asyncio.ensure_future(batcher.submit("a", [0]))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit("b", [1]))
        await asyncio.sleep(0.01)
        await batcher.stop()
        with pytest.raises(RuntimeError, match="shutting down"):
            await queued
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit("a", [2])
        model.gate.set()  # the pass that was running still answers its request
        assert await running == ("m1", [0])

    asyncio.run(go())
