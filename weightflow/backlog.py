"""What the database knows that the stream may not (yet): events waiting in a service's outbox, and dead
letters whose announcement could not be published.

The stream is the read model (`status`, `runs`, `dlq ls` read it), but while nats-server cannot store
anything (a full disk) a run's next event and its dead letters exist only as outbox rows: committed, not
yet announced. Reading them here lets `status` say why a run waits and `dlq ls` show every dead letter;
a dead-letter row and its `DeadLettered` outbox row are written in one transaction, so the outbox holds
every dead letter with the very event id it has (or will have) on the stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from weightflow.contracts.base import parse_event
from weightflow.contracts.workflow import DeadLettered
from weightflow.shared.bus.decoding import envelope
from weightflow.shared.db import OutboxRecord
from weightflow.shared.natsd import StoreHealth
from weightflow.shared.settings import Settings

MAX_ROWS = 10_000  # read at most this many waiting rows: enough to say why, bounded when a relay is stuck long


@dataclass(frozen=True)
class Waiting:
    """One committed event its service has not published yet (`parked`: never will, see `doctor`)."""

    service: str
    event_id: str
    subject: str
    run_id: str | None
    created_at: datetime
    attempts: int
    last_error: str | None
    parked: bool


@dataclass
class Backlog:
    waiting: list[Waiting] = field(default_factory=list)
    letters: list[DeadLettered] = field(default_factory=list)  # not published yet: the stream has the others


def database_engine(settings: Settings) -> Engine | None:
    """The services' database, when this machine can see it (never creates one: a CLI run elsewhere has none)."""
    from weightflow.shared.db import make_engine

    if settings.database_url:
        return make_engine(settings.database_url)
    path = settings.home / "weightflow.db"
    return make_engine(f"sqlite:///{path.resolve()}") if path.exists() else None


def read_backlog(engine: Engine) -> Backlog:
    letter_subject = DeadLettered.subject()
    backlog = Backlog()
    with Session(engine) as session:
        for row in session.exec(select(OutboxRecord).where(col(OutboxRecord.published_at).is_(None))
                                .order_by(col(OutboxRecord.id)).limit(MAX_ROWS)):
            _, run_id = envelope(row.payload)
            backlog.waiting.append(Waiting(row.service, row.event_id, row.subject, run_id, row.created_at,
                                           row.attempts, row.last_error, row.parked_at is not None))
        for row in session.exec(select(OutboxRecord).where(OutboxRecord.subject == letter_subject)
                                .where(col(OutboxRecord.published_at).is_(None))
                                .order_by(col(OutboxRecord.id)).limit(MAX_ROWS)):
            try:
                letter = parse_event(row.payload, DeadLettered)
            except ValueError:
                continue
            assert isinstance(letter, DeadLettered)
            backlog.letters.append(letter)
    return backlog


def backlog_of(settings: Settings) -> tuple[Backlog | None, str | None]:
    """The backlog, or None and why it could not be read (no database here, or an error: never a crash)."""
    try:
        engine = database_engine(settings)
        if engine is None:
            return None, f"no database under {settings.home} (set WEIGHTFLOW_DATABASE_URL to read the services' one)"
        return read_backlog(engine), None
    except Exception as exc:  # a foreign, locked or unreachable database: said, not raised
        return None, f"database not readable: {type(exc).__name__}: {str(exc)[:200]}"


def merge_letters(on_stream: Iterable[DeadLettered], backlog: Backlog | None) -> list[tuple[DeadLettered, bool]]:
    """Every dead letter once, oldest first, with whether it is on the stream (the outbox holds the same event
    id for a letter that is on both)."""
    seen: dict[UUID, tuple[DeadLettered, bool]] = {e.event_id: (e, True) for e in on_stream}
    for letter in backlog.letters if backlog else []:
        seen.setdefault(letter.event_id, (letter, False))
    return sorted(seen.values(), key=lambda pair: pair[0].occurred_at)


def why_waiting(run_ids: set[UUID], backlog: Backlog | None, store: StoreHealth | None) -> list[str]:
    """Why a run that has not ended makes no progress: its events waiting in an outbox (and the store that
    refuses them), or its dead letters not yet on the stream. Empty when nothing is known to hold it."""
    backlog = backlog or Backlog()
    runs = {str(r) for r in run_ids}
    lines: list[str] = []
    store_errors = store.store_errors if store is not None else ()
    for service, rows in _by_service(w for w in backlog.waiting if w.run_id in runs).items():
        first = rows[0]
        parked = sum(1 for w in rows if w.parked)
        cause = (f"NATS store not writable: {store_errors[0]}" if store_errors
                 else f"last error: {first.last_error}" if first.last_error else "not published yet")
        lines.append(f"waiting: {len(rows)} event(s) unpublished in {service}'s outbox since "
                     f"{_clock(first.created_at)} ({first.attempts} attempt(s)"
                     f"{f', {parked} parked' if parked else ''}): {cause}")
    for letter in backlog.letters:
        if letter.run_id in run_ids:
            lines.append(f"dead-lettered by {letter.service} ({letter.reason}) at {_clock(letter.occurred_at)}, "
                         f"in the database, not yet on the stream: {' '.join(letter.error.split())[:300]}")
    if store_errors and not lines:
        lines.append(f"NATS store not writable, so the run's next event cannot be stored: {store_errors[0]}")
    return lines


def _by_service(rows: Iterable[Waiting]) -> dict[str, list[Waiting]]:
    out: dict[str, list[Waiting]] = {}
    for row in rows:
        out.setdefault(row.service, []).append(row)
    return out


def _clock(moment: datetime) -> str:
    """Outbox times are UTC (a SQLite column gives them back without their zone)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
