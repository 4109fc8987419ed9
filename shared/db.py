"""Database engine plus the tables every service shares the shape of: inbox, outbox, dead letters.

The inbox row (service, event_id) is written in the same transaction as a handler's side effects, so a
redelivered event is recognised and changes nothing (the eventsourcing "tracking record" pattern).
Outbox rows are written in that transaction too and published after commit by a relay, so a crash
between commit and publish never loses the announcement.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlmodel import Field, Session, SQLModel, create_engine

from contracts.base import utcnow


class InboxRecord(SQLModel, table=True):
    __tablename__ = "wf_inbox"
    service: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    event_type: str
    run_id: str = Field(index=True)
    processed_at: datetime = Field(default_factory=utcnow)


class OutboxRecord(SQLModel, table=True):
    __tablename__ = "wf_outbox"
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True)
    service: str = Field(index=True)
    subject: str
    payload: bytes
    created_at: datetime = Field(default_factory=utcnow)
    published_at: datetime | None = Field(default=None, index=True)


class DeadLetterRecord(SQLModel, table=True):
    __tablename__ = "wf_dead_letters"
    id: int | None = Field(default=None, primary_key=True)
    service: str = Field(index=True)
    subject: str
    error: str
    stream_sequence: int | None = None
    deliveries: int = 0
    trace_id: str | None = None
    payload: bytes
    created_at: datetime = Field(default_factory=utcnow)
    replayed_at: datetime | None = None


def make_engine(url: str) -> Engine:
    """SQLite gets WAL and a busy timeout so several service processes can write one file."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa_event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


def create_tables(engine: Engine, attempts: int = 5) -> None:
    """Create every table the imported models define (idempotent); run by each service at start.

    Services start together: two may both see a table missing and race to create it. The loser's
    error says the table already exists; trying again sees it and moves on.
    """
    for attempt in range(attempts):
        try:
            SQLModel.metadata.create_all(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError) as exc:
            if ("already exists" not in str(exc) and "duplicate key" not in str(exc)) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session
