"""The run registry: is this run one the requirements service accepted? (see shared.bus.streams)"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from uuid import UUID

from nats.js.errors import NotFoundError

from weightflow.contracts.base import Event
from weightflow.contracts.workflow import RunRecord
from weightflow.shared.bus.errors import OrphanError
from weightflow.shared.bus.streams import run_subject, runs_stream_name
from weightflow.shared.settings import Settings

KNOWN_RUNS = 4096  # registrations a process keeps in memory (a few hundred bytes each)


class MemoryRuns:
    """The registry kept in a dict: the in-process runner's."""

    def __init__(self) -> None:
        self.records: dict[UUID, RunRecord] = {}

    def get(self, run_id: UUID) -> RunRecord | None:
        return self.records.get(run_id)


class NatsRuns:
    """Reads the registry stream with direct gets (last message of `wfruns.<run_id>`).

    With replicas, any replica answers a direct get, and a follower may not have applied a registration its
    leader acknowledged a moment ago (or may be a node back from a crash, catching up): a miss is confirmed by
    the stream leader before the run is called unknown, so a lagging replica cannot turn a run into an orphan.
    """

    def __init__(self, js: Any, settings: Settings) -> None:
        self.js = js
        self.stream = runs_stream_name(settings)
        # A registration never changes (a reroute or a change starts a new run), so one found is kept: every
        # event of a run after its first costs no round trip. A miss is never kept (the run may be registered
        # a moment later).
        self._known: OrderedDict[UUID, RunRecord] = OrderedDict()

    async def fetch(self, run_id: UUID) -> RunRecord | None:
        known = self._known.get(run_id)
        if known is not None:
            self._known.move_to_end(run_id)
            return known
        for direct in (True, False):
            try:
                msg = await self.js.get_last_msg(self.stream, run_subject(run_id), direct=direct)
            except NotFoundError:
                continue
            record = RunRecord.model_validate_json(msg.data)
            self._known[run_id] = record
            if len(self._known) > KNOWN_RUNS:
                self._known.popitem(last=False)
            return record
        return None


def check_run(event: Event, record: RunRecord | None) -> None:
    """Raise OrphanError unless the event's run is registered and the event agrees with its registration."""
    if record is None:
        raise OrphanError(f"run {event.run_id} is not a run the requirements service accepted: "
                          f"{event.type_name()} {event.event_id} has no history behind it")
    refusal = record.refusal(event)
    if refusal is not None:
        raise OrphanError(refusal)
