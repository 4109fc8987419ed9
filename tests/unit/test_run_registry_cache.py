"""A run's registration is read from the stream once per process; a miss is asked again (it may come later)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from weightflow.contracts.workflow import RunRecord
from weightflow.shared.bus import runs
from weightflow.shared.bus.runs import NatsRuns
from weightflow.shared.settings import Settings


class Js:
    """A run registry stream: the records it holds, and every get it was asked."""

    def __init__(self) -> None:
        self.records: dict[str, RunRecord] = {}
        self.asked: list[str] = []

    async def get_last_msg(self, stream: str, subject: str, direct: bool = False) -> Any:
        self.asked.append(subject)
        if subject not in self.records:
            raise NotFoundError
        return RawStreamMsg(subject=subject, data=self.records[subject].model_dump_json().encode())


def record() -> RunRecord:
    return RunRecord(run_id=uuid4(), requirements_digest="d" * 64, version=1, deployment="x")


def test_a_found_run_costs_one_read_and_a_missing_one_is_asked_again(monkeypatch: Any) -> None:
    js = Js()
    registry = NatsRuns(js, Settings())
    known, later = record(), record()
    js.records[f"wfruns.{known.run_id}"] = known

    async def scenario() -> None:
        for _ in range(5):
            assert await registry.fetch(known.run_id) == known
        assert js.asked == [f"wfruns.{known.run_id}"]
        assert await registry.fetch(later.run_id) is None  # not registered yet: direct get, then the leader
        js.records[f"wfruns.{later.run_id}"] = later
        assert await registry.fetch(later.run_id) == later  # registered since: found, not a cached miss

    asyncio.run(scenario())


def test_the_kept_registrations_are_bounded_least_recently_used_first(monkeypatch: Any) -> None:
    monkeypatch.setattr(runs, "KNOWN_RUNS", 3)
    js = Js()
    registry = NatsRuns(js, Settings())
    records = [record() for _ in range(4)]
    for r in records:
        js.records[f"wfruns.{r.run_id}"] = r

    async def scenario() -> None:
        for r in records[:3]:
            await registry.fetch(r.run_id)
        await registry.fetch(records[0].run_id)  # used again: the oldest is now records[1]
        await registry.fetch(records[3].run_id)  # a fourth: records[1] goes
        js.asked.clear()
        for r in (records[0], records[2], records[3]):
            await registry.fetch(r.run_id)
        assert js.asked == []
        await registry.fetch(records[1].run_id)
        assert js.asked == [f"wfruns.{records[1].run_id}"]

    asyncio.run(scenario())
