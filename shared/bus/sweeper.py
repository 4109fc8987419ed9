"""The sweeper: finds messages JetStream stopped delivering with neither a handled nor a dead-letter record.

The bus never lets JetStream give up (consumers have no max_deliver) and dead-letters on its own budget,
so nothing should vanish; this is the check that it did not. Each consumer has an audit twin on the
same subject: the sweeper records every message it sees (`wf_audit`), and once the main consumer's ack
floor has passed a message, it must have an inbox row or a dead letter. One with neither (terminated by
hand, dropped by a misconfigured consumer) becomes a `vanished` dead letter, so `status` shows the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from weightflow.shared.bus.decoding import envelope
from weightflow.shared.bus.service import Service
from weightflow.shared.db import AuditRecord, DeadLetterRecord, InboxRecord
from weightflow.shared.settings import Settings

log = logging.getLogger("weightflow.bus.sweeper")

DeadLetter = Callable[..., Awaitable[bool]]
FETCH = 100


def record_seen(engine: Engine, rows: list[AuditRecord]) -> None:
    with Session(engine) as session:
        for row in rows:
            if session.get(AuditRecord, (row.service, row.stream_sequence)) is None:
                session.add(row)
        session.commit()


def unresolved(engine: Engine, service: str, durable: str, ack_floor: int) -> list[AuditRecord]:
    """Audit rows the main consumer is past; those handled or dead-lettered are removed on the way."""
    left: list[AuditRecord] = []
    with Session(engine, expire_on_commit=False) as session:
        rows = session.exec(select(AuditRecord).where(AuditRecord.service == service)
                            .where(AuditRecord.durable == durable)
                            .where(AuditRecord.stream_sequence <= ack_floor)).all()
        for row in rows:
            handled = row.event_id is not None and session.get(InboxRecord, (service, row.event_id)) is not None
            lettered = session.exec(select(DeadLetterRecord).where(DeadLetterRecord.service == service)
                                    .where(DeadLetterRecord.stream_sequence == row.stream_sequence)).first()
            if handled or lettered is not None:
                session.delete(row)
            else:
                left.append(row)
        session.commit()
    return left


def forget(engine: Engine, row: AuditRecord) -> None:
    with Session(engine) as session:
        found = session.get(AuditRecord, (row.service, row.stream_sequence))
        if found is not None:
            session.delete(found)
            session.commit()


class Sweeper:
    def __init__(self, service: Service, settings: Settings, engine: Engine, js: Any, dead_letter: DeadLetter) -> None:
        self.service, self.settings, self.engine, self.js = service, settings, engine, js
        self.dead_letter = dead_letter
        self.subscriptions: dict[str, Any] = {}

    async def loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.settings.sweep_interval_s)
                try:
                    await self.sweep_once()
                except Exception:
                    log.exception("%s: sweep failed; next try in %.0f s", self.service.name,
                                  self.settings.sweep_interval_s)
        finally:  # stopping: leave nothing for the connection's drain to wait on
            for sub in self.subscriptions.values():
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self.subscriptions.clear()

    async def _subscription(self, subject: str, audit: str) -> Any:
        if audit not in self.subscriptions:
            self.subscriptions[audit] = await self.js.pull_subscribe(
                subject, durable=audit, stream=self.settings.stream,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_deliver=-1),
                inbox_prefix=f"{self.service.inbox_prefix()}.".encode())
        return self.subscriptions[audit]

    async def sweep_once(self) -> int:
        """Record new messages, then dead-letter the vanished ones; returns how many vanished."""
        vanished = 0
        for spec in self.service.handlers:
            subject = spec.event_type.subject()
            durable = self.service.durable_name(spec.event_type)
            sub = await self._subscription(subject, self.service.audit_durable_name(spec.event_type))
            while True:
                try:
                    msgs = await sub.fetch(FETCH, timeout=0.5)
                except TimeoutError:
                    break
                rows = []
                for m in msgs:
                    event_id, run_id = envelope(m.data)
                    rows.append(AuditRecord(service=self.service.name, stream_sequence=m.metadata.sequence.stream,
                                            durable=durable, subject=m.subject, event_id=event_id, run_id=run_id))
                await asyncio.to_thread(record_seen, self.engine, rows)
                for m in msgs:
                    await m.ack()
                if len(msgs) < FETCH:
                    break
            info = await self.js.consumer_info(self.settings.stream, durable)
            for row in await asyncio.to_thread(unresolved, self.engine, self.service.name, durable,
                                               info.ack_floor.stream_seq):
                error = (f"JetStream stopped delivering stream sequence {row.stream_sequence} to {durable} and no "
                         f"handled or dead-letter record exists (terminated or dropped outside the bus); "
                         f"`weightflow dlq replay` re-sends it from the stream")
                if await self.dead_letter(row.subject, b"", "vanished", error, row.stream_sequence, 0,
                                          event_id=row.event_id, run_id=row.run_id):
                    await asyncio.to_thread(forget, self.engine, row)
                    vanished += 1
        return vanished
