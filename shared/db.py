"""Database engine plus the tables the bus keeps for every service: inbox, outbox, dead letters, audit.

The inbox row (service, event_id) is written in the same transaction as a handler's side effects, so a
redelivered event is recognised and changes nothing (the eventsourcing "tracking record" pattern).
Outbox rows are written in that transaction too and published after commit by a relay, so a crash
between commit and publish never loses the announcement.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel, create_engine

from weightflow.contracts.base import utcnow

# The last table schema from before migrations. The `wf_schema` row holds it so that those releases refuse a
# database they cannot use; what a database is now is its Alembic revision (shared.migrations).
SCHEMA_VERSION = 3


class SchemaRecord(SQLModel, table=True):
    __tablename__ = "wf_schema"
    id: int = Field(default=1, primary_key=True)
    version: int


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
    attempts: int = 0
    last_error: str | None = None
    parked_at: datetime | None = Field(default=None, description="given up on: the relay skips it")
    trace_context: str | None = Field(default=None, description="W3C traceparent of the span that committed it: "
                                      "whoever publishes the row (the handler, the relay after a crash) continues "
                                      "that trace")


class DeadLetterRecord(SQLModel, table=True):
    __tablename__ = "wf_dead_letters"
    id: int | None = Field(default=None, primary_key=True)
    service: str = Field(index=True)
    subject: str
    reason: str
    error: str
    run_id: str | None = Field(default=None, index=True)
    event_id: str | None = None
    stream_sequence: int | None = Field(default=None, index=True)
    deliveries: int = 0
    trace_id: str | None = None
    payload_digest: str | None = None
    payload_bytes: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class EffectRecord(SQLModel, table=True):
    """An effect done once per business key (a run's benchmark, fit, training, registration), whatever event
    id asked for it: the inbox stops a redelivery, this stops a replay under a fresh event id."""

    __tablename__ = "wf_effects"
    service: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    event_id: str
    run_id: str = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow)


class AuditRecord(SQLModel, table=True):
    """A stream message seen by a service's audit consumer, kept until its fate (handled or
    dead-lettered) is known; one that JetStream dropped with neither becomes a `vanished` dead letter."""

    __tablename__ = "wf_audit"
    service: str = Field(primary_key=True)
    stream_sequence: int = Field(primary_key=True)
    durable: str
    subject: str
    event_id: str | None = None
    run_id: str | None = None
    seen_at: datetime = Field(default_factory=utcnow)


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


class SchemaMismatchError(RuntimeError):
    """The database is not at this release's schema revision; the message says what to run."""


def create_tables(engine: Engine) -> None:
    """What every service does at start: an empty database is made at the head revision (every table, so the
    embedded default needs no extra command); one at head is used as is; any other is refused with the
    command that upgrades it (SchemaMismatchError). See shared.migrations."""
    from weightflow.shared import migrations

    migrations.ensure_current(engine)
