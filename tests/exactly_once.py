"""The one check every crash test ends with: the run's events and effects each happened exactly once.

The crash-safety and cluster tests kill different things (service processes, nats-server, a cluster's leaders)
and run different workflows, so each passes its own counts; what "exactly once" means is the same for both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from uuid import UUID

from sqlalchemy import text
from sqlmodel import Session

from weightflow.client import RunTracker
from weightflow.contracts.base import Event
from weightflow.contracts.workflow import DeadLettered
from weightflow.shared.db import make_engine

from .conftest import LiveStack


def assert_exactly_once(live: LiveStack, events: list[Event], run_id: UUID, *, expected: Counter[str],
                        rows: Mapping[str, int], effects: Counter[str] | None = None, canaries: int = 1,
                        dead_letters: bool = True) -> None:
    """Every event of the stream stored once; the run's events are `expected` (type name -> count); each table of
    `rows` holds that many rows for the run; `wf_effects` holds `effects` (service -> count) when given; the
    monitoring service ran `canaries` canaries. `dead_letters=False`: no dead letter was sent or written either."""
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids)), "an event was stored twice in the stream"
    mine = RunTracker({run_id})
    for e in events:
        mine.feed(e)
    assert Counter(e.type_name() for e in mine.events) == expected
    if not dead_letters:
        assert not [e for e in events if isinstance(e, DeadLettered)], live.logs()
    if live.settings.database_url:  # the state was where the test put it, not in the home's SQLite file
        assert not (live.stack.home / "weightflow.db").exists()
    with Session(make_engine(live.settings.resolved_database_url())) as session:
        for table, count in rows.items():
            found = session.execute(text(f"SELECT count(*) FROM {table} WHERE run_id = :r"),
                                    {"r": str(run_id)}).scalar_one()
            assert found == count, f"{table}: {found} rows for the run, expected {count}"
        if effects is not None:
            done = session.execute(text("SELECT service FROM wf_effects WHERE run_id = :r"), {"r": str(run_id)})
            assert Counter(row[0] for row in done) == effects
        assert session.execute(text("SELECT count(*) FROM monitoring_canaries")).scalar_one() == canaries
        if not dead_letters:
            assert session.execute(text("SELECT count(*) FROM wf_dead_letters")).scalar_one() == 0
