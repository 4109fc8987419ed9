"""A service as declared: its name, its typed handlers and periodic jobs, checked against the topology.

A handler computes first, outside any transaction, and commits last: it returns either the events it
emits, or a `Commit` — a short function the bus runs inside the one transaction that also writes the
inbox row and the outbox, so minutes of model work never hold a database transaction open.

The inbox makes an event id count once; an effect that must happen once per *thing* (a run's benchmark,
fit, training, registration) is keyed by that thing too (`HandlerContext.done` / `once`), because a replay
under a fresh event id passes the inbox and JetStream's duplicate window alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session

from weightflow.contracts import topology
from weightflow.contracts.base import Event
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.db import EffectRecord
from weightflow.shared.settings import Settings

E = TypeVar("E", bound=Event)
T = TypeVar("T")

Commit = Callable[[Session], Sequence[Event]]
HandlerResult = Sequence[Event] | Commit


@dataclass(frozen=True)
class Delivery:
    """Where a message sits in the stream and how often it has been delivered."""

    subject: str
    stream_sequence: int | None
    deliveries: int


@dataclass
class HandlerContext:
    """What a handler may touch: short reads of its service's tables, the artifact store, its settings."""

    service: str
    store: ArtifactStore
    settings: Settings
    engine: Engine
    delivery: Delivery = field(default_factory=lambda: Delivery("", None, 1))

    def read(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in a short transaction of its own (reads only: writes belong in the Commit)."""
        with Session(self.engine, expire_on_commit=False) as session:
            return fn(session)

    def done(self, key: str) -> bool:
        """Whether the effect named `key` was committed already (checked before the model work, to skip it)."""
        return self.read(lambda session: session.get(EffectRecord, (self.service, key)) is not None)

    def once(self, key: str, cause: Event, result: HandlerResult) -> Commit:
        """`result`, committed only if no event has claimed `key` yet; otherwise nothing and no events. The
        claim is a row with `key` as its primary key in the same transaction, so two replicas racing with
        different event ids cannot both commit: the loser's constraint error is retried and finds the key."""

        def commit(session: Session) -> Sequence[Event]:
            if session.get(EffectRecord, (self.service, key)) is not None:
                return []
            session.add(EffectRecord(service=self.service, key=key, event_id=str(cause.event_id),
                                     run_id=str(cause.run_id)))
            session.flush()
            return result(session) if callable(result) else result

        return commit


Handler = Callable[[E, HandlerContext], HandlerResult]
Periodic = Callable[[HandlerContext], Commit | None]


@dataclass
class HandlerSpec(Generic[E]):
    event_type: type[E]
    fn: Handler[E]
    requires_run: bool


@dataclass
class Service:
    """A named service of the topology: its handlers and periodic jobs (the runtime lives elsewhere)."""

    name: str
    declared: topology.Stage | None = field(default=None, repr=False)  # tests' own services; else the topology's
    handlers: list[HandlerSpec[Any]] = field(default_factory=list)
    periodics: list[tuple[Callable[[Settings], float], Periodic]] = field(default_factory=list)

    def handles(self, event_type: type[E], *, requires_run: bool = True) -> Callable[[Handler[E]], Handler[E]]:
        """Register the handler of `event_type`. With `requires_run` (the default) the bus first checks
        that the event's run is registered (and, for events carrying a RunContext, that it matches)."""

        def register(fn: Handler[E]) -> Handler[E]:
            if event_type not in self.stage.consumes:
                raise RuntimeError(f"{self.name} handles {event_type.__name__}, which contracts/topology.py "
                                   f"does not list among its consumed events")
            self.handlers.append(HandlerSpec(event_type, fn, requires_run))
            return fn

        return register

    def every(self, interval: Callable[[Settings], float]) -> Callable[[Periodic], Periodic]:
        def register(fn: Periodic) -> Periodic:
            self.periodics.append((interval, fn))
            return fn

        return register

    @property
    def stage(self) -> topology.Stage:
        return self.declared or topology.stage(self.name)

    @property
    def publishes(self) -> tuple[type[Event], ...]:
        return (*self.stage.emits, *topology.ALWAYS_EMITTED)

    def check_complete(self) -> None:
        """Every event the topology says this service consumes has a handler, exactly one."""
        handled = [spec.event_type for spec in self.handlers]
        missing = [e.__name__ for e in self.stage.consumes if e not in handled]
        twice = sorted({e.__name__ for e in handled if handled.count(e) > 1})
        if missing or twice:
            raise RuntimeError(f"{self.name}: no handler for {missing}; handled twice: {twice}")

    def durable_name(self, event_type: type[Event]) -> str:
        return f"{self.name}__{event_type.STAGE}__{event_type.NAME}"

    def audit_durable_name(self, event_type: type[Event]) -> str:
        return f"{self.durable_name(event_type)}__audit"

    def consumers(self, settings: Settings) -> list[tuple[str, str, str]]:
        """(stream, durable, filter subject) of every consumer this service binds: its handlers' and their
        audit twins (the sweeper's); the source of its NATS permissions (shared.nats_auth)."""
        out = []
        for event_type in self.stage.consumes:  # the topology's, so permissions need no service code loaded
            out.append((settings.stream, self.durable_name(event_type), event_type.subject()))
            out.append((settings.stream, self.audit_durable_name(event_type), event_type.subject()))
        return out

    def inbox_prefix(self) -> str:
        """Replies (JetStream acks, fetched messages) arrive under this prefix, so NATS permissions can
        let each service read its own inbox only (shared.nats_auth)."""
        return f"_INBOX.{self.name}"
