"""The outbox relay: publishes a service's committed events in order, and never lets one row block.

A row that fails for a reason retrying cannot fix (too big for the server, a subject the user may not
publish) is parked with its reason and the relay moves on; a transient failure (server down, storage
full) stops this round and is retried, keeping the order. The age of the oldest unpublished row is
reported (metric and `weightflow doctor`), so a stalled relay is seen, not discovered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from weightflow.contracts.base import utcnow
from weightflow.contracts.limits import MAX_ERROR_CHARS
from weightflow.shared.bus.streams import publish_with_retry, transient_publish_error
from weightflow.shared.db import OutboxRecord
from weightflow.shared.telemetry import continued_trace

log = logging.getLogger("weightflow.bus.outbox")

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]
BATCH = 200


def pending(engine: Engine, service: str) -> list[OutboxRecord]:
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(
            select(OutboxRecord).where(OutboxRecord.service == service)
            .where(col(OutboxRecord.published_at).is_(None)).where(col(OutboxRecord.parked_at).is_(None))
            .order_by(col(OutboxRecord.id)).limit(BATCH)))


def _update(engine: Engine, row_id: int | None, **values: object) -> None:
    with Session(engine) as session:
        row = session.get(OutboxRecord, row_id)
        if row is not None:
            for key, value in values.items():
                setattr(row, key, value)
            session.add(row)
            session.commit()


async def relay(engine: Engine, service: str, publish: Publish, to_thread: Callable[..., Awaitable[object]]) -> int:
    """Publish what is pending; returns how many rows were published. `to_thread` runs DB work off the loop."""
    rows: list[OutboxRecord] = await to_thread(pending, engine, service)  # type: ignore[assignment]
    sent = 0
    for row in rows:
        try:
            with continued_trace(row.trace_context):  # the committing handler's trace, whoever publishes
                await publish_with_retry(publish, row.subject, row.payload, row.event_id)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            if transient_publish_error(exc):
                log.warning("%s: publish of %s deferred (%s); the relay retries in order", service, row.event_id,
                            error)
                await to_thread(_update, engine, row.id, attempts=row.attempts + 1, last_error=error)
                return sent
            log.error("%s: outbox row %s parked, it can never be published: %s", service, row.event_id, error)
            await to_thread(_update, engine, row.id, attempts=row.attempts + 1, last_error=error,
                            parked_at=utcnow())
            continue
        await to_thread(_update, engine, row.id, published_at=utcnow(), last_error=None)
        sent += 1
    return sent


def oldest_unpublished_age_s(engine: Engine, service: str | None = None, now: datetime | None = None) -> float:
    """Seconds since the oldest row still waiting to be published was committed (0 when none waits)."""
    with Session(engine) as session:
        query = select(func.min(OutboxRecord.created_at)).where(col(OutboxRecord.published_at).is_(None)) \
            .where(col(OutboxRecord.parked_at).is_(None))
        if service is not None:
            query = query.where(OutboxRecord.service == service)
        oldest = session.exec(query).first()
    if oldest is None:
        return 0.0
    now = now or utcnow()
    if oldest.tzinfo is None:
        now = now.replace(tzinfo=None)
    return max(0.0, (now - oldest).total_seconds())


def waiting(engine: Engine, service: str, now: datetime | None = None) -> tuple[int, float]:
    """(rows committed and still waiting to be published, seconds the oldest has waited): one query, for the
    metrics. Parked rows are not waiting."""
    with Session(engine) as session:
        count, oldest = session.exec(
            select(func.count(), func.min(OutboxRecord.created_at)).where(OutboxRecord.service == service)
            .where(col(OutboxRecord.published_at).is_(None)).where(col(OutboxRecord.parked_at).is_(None))).one()
    if oldest is None:
        return int(count), 0.0
    now = now or utcnow()
    if oldest.tzinfo is None:
        now = now.replace(tzinfo=None)
    return int(count), max(0.0, (now - oldest).total_seconds())


def parked(engine: Engine) -> list[OutboxRecord]:
    with Session(engine) as session:
        return list(session.exec(select(OutboxRecord).where(col(OutboxRecord.parked_at).is_not(None))
                                 .order_by(col(OutboxRecord.id))))
