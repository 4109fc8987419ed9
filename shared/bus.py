"""The event bus every service runs on: JetStream stream, durable consumers, inbox/outbox, dead letters.

A service declares plain handlers `(event, ctx) -> events`; this module gives them the promises of
the design: at-least-once delivery with idempotent effects (inbox row in the handler's transaction),
announcements that survive a crash (outbox written in that transaction, published after commit with
`Nats-Msg-Id = event_id`), ack only after commit, NAK with backoff on error, in-progress heartbeats
while long work runs, and a dead letter (table + `DeadLettered` event) for what can never succeed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

from faststream import AckPolicy, FastStream
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from contracts.base import SUBJECT_PREFIX, Event, parse_event, utcnow
from contracts.workflow import DeadLettered
from shared.artifacts import ArtifactStore
from shared.db import DeadLetterRecord, InboxRecord, OutboxRecord, create_tables, make_engine
from shared.settings import Settings
from shared.telemetry import current_trace_id, setup_tracing

log = logging.getLogger("weightflow.bus")

E = TypeVar("E", bound=Event)

PUBLISH_ATTEMPTS = 6
# JetStream announces a message it gave up redelivering (no ack after max_deliver tries: the handler
# crashed or hung every time, so the bus's own dead-lettering never ran) on this subject.
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


def advisory_stream_name(settings: Settings) -> str:
    return f"{settings.stream}_ADVISORIES"


def advisory_subject(settings: Settings, durable: str = ">") -> str:
    """Where JetStream announces giving up on a message of `durable` (all of them by default)."""
    return f"{MAX_DELIVERIES_ADVISORY}.{settings.stream}.{durable}"


def exhausted_durable(durable: str) -> str:
    """The consumer that dead-letters what `durable` never acked."""
    return f"{durable}__exhausted"


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (bad input): the message is dead-lettered at once."""


def stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=settings.stream,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        duplicate_window=settings.duplicate_window_s,
    )


def advisory_stream_config(settings: Settings) -> StreamConfig:
    """Keeps max-deliveries advisories until a service has dead-lettered them (they are core NATS
    messages: without a stream one sent while every replica restarts would be lost)."""
    return StreamConfig(name=advisory_stream_name(settings), subjects=[advisory_subject(settings)])


async def ensure_stream(js: Any, settings: Settings) -> None:
    """Create the workflow stream and its advisory stream if missing (idempotent; safe from any process)."""
    for config in (stream_config(settings), advisory_stream_config(settings)):
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)


async def publish_raw(broker: NatsBroker, subject: str, payload: bytes, msg_id: str, stream: str) -> None:
    """JetStream publish with the event id as Nats-Msg-Id, retried with the same id on timeout.

    A timed-out publish may have been stored; re-sending the same id lets the server drop the copy.
    """
    delay = 0.2
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            await broker.publish(payload, subject, headers={"Nats-Msg-Id": msg_id}, stream=stream, timeout=2.0)
            return
        except Exception:
            if attempt == PUBLISH_ATTEMPTS - 1:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass
class HandlerContext:
    """What a handler may touch: its service's own session (committed by the bus) and the artifact store."""

    service: str
    session: Session
    store: ArtifactStore
    settings: Settings


Handler = Callable[[E, HandlerContext], Sequence[Event]]
Periodic = Callable[[HandlerContext], Sequence[Event]]


@dataclass
class _HandlerSpec(Generic[E]):
    event_type: type[E]
    fn: Handler[E]


@dataclass
class Service:
    """A named service: its handlers, periodic jobs and the runtime that binds them to NATS and the DB."""

    name: str
    handlers: list[_HandlerSpec[Any]] = field(default_factory=list)
    # Every event type the handlers and periodic jobs return (DeadLettered is implied): the source of
    # this service's publish permissions in the scaled deployment (shared.nats_auth).
    publishes: tuple[type[Event], ...] = ()
    periodics: list[tuple[Callable[[Settings], float], Periodic]] = field(default_factory=list)
    engine: Engine | None = None
    store: ArtifactStore | None = None
    settings: Settings | None = None
    _broker: NatsBroker | None = None
    _flush: asyncio.Event | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _inflight: dict[int, NatsMessage] = field(default_factory=dict)
    _released: set[int] = field(default_factory=set)
    _stopping: bool = False
    _exit_process_on_stop: bool = False

    # -- declaration -------------------------------------------------------------------------
    def handles(self, event_type: type[E]) -> Callable[[Handler[E]], Handler[E]]:
        def register(fn: Handler[E]) -> Handler[E]:
            self.handlers.append(_HandlerSpec(event_type, fn))
            return fn

        return register

    def every(self, interval: Callable[[Settings], float]) -> Callable[[Periodic], Periodic]:
        def register(fn: Periodic) -> Periodic:
            self.periodics.append((interval, fn))
            return fn

        return register

    def consumed_subjects(self) -> list[str]:
        return [spec.event_type.subject() for spec in self.handlers]

    def consumers(self, settings: Settings) -> list[tuple[str, str, str]]:
        """(stream, durable, filter subject) of every consumer this service binds: the source of its
        NATS permissions (shared.nats_auth)."""
        out = []
        for spec in self.handlers:
            durable = self.durable_name(spec.event_type)
            out.append((settings.stream, durable, spec.event_type.subject()))
            out.append((advisory_stream_name(settings), exhausted_durable(durable),
                        advisory_subject(settings, durable)))
        return out

    # -- runtime -----------------------------------------------------------------------------
    def durable_name(self, event_type: type[Event]) -> str:
        return f"{self.name}__{event_type.STAGE}__{event_type.NAME}"

    def inbox_prefix(self) -> str:
        """Replies (JetStream acks, fetched messages) arrive under this prefix, so NATS permissions can
        let each service read its own inbox only (shared.nats_auth)."""
        return f"_INBOX.{self.name}"

    def build(self, settings: Settings | None = None, *, url: str | None = None) -> FastStream:
        """The faststream app for this service; `url` overrides settings (used for schema generation)."""
        self.settings = settings = settings or Settings()
        provider = setup_tracing(self.name, settings)
        broker = NatsBroker(
            url or settings.resolved_nats_url(),
            name=f"weightflow-{self.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            graceful_timeout=1.0,  # our own shutdown hook gives in-flight work its grace period, then NAKs
            inbox_prefix=self.inbox_prefix(),
            middlewares=[NatsTelemetryMiddleware(tracer_provider=provider)],
        )
        self._broker = broker
        stream = JStream(name=settings.stream, subjects=[f"{SUBJECT_PREFIX}.>"],
                         duplicate_window=settings.duplicate_window_s, declare=settings.declare_stream)
        for spec in self.handlers:
            subscriber = broker.subscriber(
                spec.event_type.subject(),
                stream=stream,
                durable=self.durable_name(spec.event_type),
                pull_sub=PullSub(batch_size=1, timeout=1.0),
                config=ConsumerConfig(ack_wait=settings.ack_wait_s, max_deliver=settings.max_deliver),
                ack_policy=AckPolicy.MANUAL,
                inbox_prefix=f"{self.inbox_prefix()}.".encode(),
                title=f"{self.name}:{spec.event_type.type_name()}",
                description=(spec.fn.__doc__ or "").strip(),
            )
            subscriber(self._callback(spec))
        advisories = JStream(name=advisory_stream_name(settings), declare=settings.declare_stream,
                             subjects=[advisory_subject(settings)])
        for spec in self.handlers:
            durable = self.durable_name(spec.event_type)
            exhausted = broker.subscriber(
                advisory_subject(settings, durable),
                stream=advisories,
                durable=exhausted_durable(durable),
                pull_sub=PullSub(batch_size=1, timeout=1.0),
                config=ConsumerConfig(ack_wait=settings.ack_wait_s),
                ack_policy=AckPolicy.MANUAL,
                inbox_prefix=f"{self.inbox_prefix()}.".encode(),
                title=f"{self.name}:{spec.event_type.type_name()}:exhausted",
                description="JetStream gave up redelivering this event: dead-letter it.",
            )
            exhausted(self._exhausted_callback(spec))
        app = FastStream(broker, on_startup=[self._on_startup], after_startup=[self._after_startup],
                         on_shutdown=[self._on_shutdown], after_shutdown=[self._after_shutdown])
        return app

    def run_process(self, settings: Settings | None = None) -> None:
        """Run as this OS process's only job until SIGTERM/SIGINT (what `weightflow service NAME` does)."""
        self._exit_process_on_stop = True
        asyncio.run(self.build(settings).run())

    async def _on_startup(self) -> None:
        assert self.settings is not None
        self.engine = make_engine(self.settings.resolved_database_url())
        create_tables(self.engine)
        self.store = ArtifactStore(self.settings.resolved_artifacts_dir())

    async def _after_startup(self) -> None:
        self._flush = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._relay_loop()))
        for interval, fn in self.periodics:
            self._tasks.append(asyncio.create_task(self._periodic_loop(interval, fn)))
        log.info("service %s consuming %s", self.name, self.consumed_subjects())

    async def _on_shutdown(self) -> None:
        """SIGTERM: take no new work, give in-flight handlers the grace period, NAK what is still running.

        A NAKed message is redelivered at once to a replica (or to this service when it restarts); if the
        abandoned handler commits after all, the inbox makes the redelivery a no-op.
        """
        assert self.settings is not None
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace_s
        while self._inflight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for key, msg in list(self._inflight.items()):
            self._released.add(key)
            with contextlib.suppress(Exception):
                await msg.nack()
            log.warning("%s: shutdown grace (%.0f s) over, NAKed in-flight %s for redelivery", self.name,
                        self.settings.shutdown_grace_s, msg.raw_message.subject)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _after_shutdown(self) -> None:
        if self._released and self._exit_process_on_stop:
            # A handler thread cannot be interrupted and the interpreter would wait for it at exit; its
            # message is already NAKed and its transaction uncommitted, so leaving now loses nothing.
            logging.shutdown()
            os._exit(0)

    def _crash_point(self, point: str) -> None:
        """Fault injection for the crash-safety tests: SIGKILL this process once at `point`.

        Enabled only by WEIGHTFLOW_CRASH_POINTS (empty in any real deployment); a marker file in the data
        directory makes each point fire once per service, so the restarted process carries on.
        """
        assert self.settings is not None
        if point not in self.settings.crash_points.split(","):
            return
        marker = self.settings.home / "crash-points" / f"{self.name}.{point}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        log.warning("%s: crash point %s: SIGKILL", self.name, point)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)

    def _context(self, session: Session) -> HandlerContext:
        assert self.store is not None and self.settings is not None
        return HandlerContext(self.name, session, self.store, self.settings)

    def _callback(self, spec: _HandlerSpec[E]) -> Callable[[NatsMessage], Any]:
        async def on_message(msg: NatsMessage) -> None:
            await self._handle(spec, msg)

        on_message.__name__ = f"{self.name}_{spec.event_type.STAGE}_{spec.event_type.NAME}"
        return on_message

    def _exhausted_callback(self, spec: _HandlerSpec[E]) -> Callable[[NatsMessage], Any]:
        async def on_exhausted(msg: NatsMessage) -> None:
            await self._record_exhausted(spec, msg)

        on_exhausted.__name__ = f"{self.name}_{spec.event_type.STAGE}_{spec.event_type.NAME}_exhausted"
        return on_exhausted

    async def _record_exhausted(self, spec: _HandlerSpec[E], msg: NatsMessage) -> None:
        """Dead-letter an event JetStream stopped redelivering. The payload stays in the stream (this
        service may not read arbitrary stream messages); `weightflow dlq show|replay` fetches it by sequence."""
        advisory = json.loads(msg.body)
        sequence = int(advisory["stream_seq"])
        deliveries = int(advisory.get("deliveries", 0))
        error = (f"no ack after {deliveries} deliveries: the {self.name} handler crashed or hung every time "
                 f"(see its log); JetStream stopped redelivering stream sequence {sequence}")

        def write() -> None:
            assert self.engine is not None
            with Session(self.engine) as session:
                seen = session.exec(select(DeadLetterRecord).where(DeadLetterRecord.service == self.name)
                                    .where(DeadLetterRecord.stream_sequence == sequence)).first()
                if seen is not None:
                    return  # a redelivered advisory, or one that raced another replica
                letter = DeadLettered(run_id=UUID(int=0), service=self.name, original_subject=spec.event_type.subject(),
                                      error=error, stream_sequence=sequence, deliveries=deliveries,
                                      trace_id=current_trace_id(), payload_b64="")
                session.add(DeadLetterRecord(service=self.name, subject=spec.event_type.subject(), error=error,
                                             stream_sequence=sequence, deliveries=deliveries,
                                             trace_id=letter.trace_id, payload=b""))
                self._stage_outbox(session, [letter])
                session.commit()

        await asyncio.to_thread(write)
        log.error("%s: %s", self.name, error)
        await self._publish_outbox()
        await msg.ack()

    async def _handle(self, spec: _HandlerSpec[E], msg: NatsMessage) -> None:
        assert self.settings is not None
        raw: bytes = msg.body
        meta = msg.raw_message.metadata
        deliveries = meta.num_delivered or 1
        try:
            event = parse_event(raw, spec.event_type)
        except (ValidationError, ValueError) as exc:
            await self._dead_letter(msg, f"invalid {spec.event_type.type_name()} payload: {exc}", deliveries)
            return
        if self._stopping:  # shutting down: leave it to a replica or to our own restart
            await msg.nack(delay=1.0)
            return
        key = id(msg)
        self._inflight[key] = msg
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            await asyncio.to_thread(self._process, spec, event)
        except PermanentError as exc:
            await self._dead_letter(msg, f"{type(exc).__name__}: {exc}", deliveries)
            return
        except Exception as exc:
            log.exception("%s failed on %s (delivery %d)", self.name, event.type_name(), deliveries)
            if deliveries >= self.settings.max_deliver:
                await self._dead_letter(msg, f"{type(exc).__name__}: {exc} (after {deliveries} deliveries)",
                                        deliveries)
            else:
                await msg.nack(delay=min(2.0**deliveries, 30.0))
            return
        finally:
            heartbeat.cancel()
            self._inflight.pop(key, None)
        if key in self._released:  # NAKed at shutdown; its redelivery will find the inbox row
            self._released.discard(key)
            return
        self._crash_point("after_commit")
        await self._publish_outbox()
        await msg.ack()

    def _process(self, spec: _HandlerSpec[Any], event: Event) -> None:
        """Run the handler and commit its effects, the inbox row and its outgoing events as one unit."""
        assert self.engine is not None
        with Session(self.engine, expire_on_commit=False) as session:
            if session.get(InboxRecord, (self.name, str(event.event_id))) is not None:
                log.info("%s: %s %s already processed", self.name, event.type_name(), event.event_id)
                return
            outgoing = spec.fn(event, self._context(session))
            session.add(InboxRecord(service=self.name, event_id=str(event.event_id),
                                    event_type=event.type_name(), run_id=str(event.run_id)))
            self._stage_outbox(session, outgoing)
            session.flush()
            self._crash_point("mid_transaction")
            try:
                session.commit()
            except IntegrityError:
                # Another replica committed the same event first: its effects stand, ours roll back.
                session.rollback()
                log.info("%s: %s %s processed concurrently elsewhere", self.name, event.type_name(), event.event_id)

    def _stage_outbox(self, session: Session, events: Sequence[Event]) -> None:
        for out in events:
            session.add(OutboxRecord(event_id=str(out.event_id), service=self.name,
                                     subject=out.subject(), payload=out.to_bytes()))

    async def _heartbeat(self, msg: NatsMessage) -> None:
        """Tell JetStream the message is still being worked on, so it is not redelivered to a replica."""
        assert self.settings is not None
        while True:
            await asyncio.sleep(max(self.settings.ack_wait_s / 3, 0.5))
            try:
                await msg.in_progress()
            except Exception:
                log.warning("%s: in-progress heartbeat failed", self.name)

    async def _dead_letter(self, msg: NatsMessage, error: str, deliveries: int) -> None:
        assert self.engine is not None
        raw: bytes = msg.body
        meta = msg.raw_message.metadata
        subject = msg.raw_message.subject
        trace_id = current_trace_id()
        try:
            run_id = parse_event(raw).run_id
        except Exception:
            run_id = None
        letter = DeadLettered(
            run_id=run_id or UUID(int=0), service=self.name, original_subject=subject, error=error,
            stream_sequence=meta.sequence.stream if meta.sequence else None, deliveries=deliveries,
            trace_id=trace_id, payload_b64=base64.b64encode(raw).decode(),
        )

        def write() -> None:
            assert self.engine is not None
            with Session(self.engine) as session:
                session.add(DeadLetterRecord(service=self.name, subject=subject, error=error,
                                             stream_sequence=letter.stream_sequence, deliveries=deliveries,
                                             trace_id=trace_id, payload=raw))
                self._stage_outbox(session, [letter])
                session.commit()

        await asyncio.to_thread(write)
        log.error("%s dead-lettered %s: %s", self.name, subject, error)
        await self._publish_outbox()
        await msg.reject()

    async def _publish_outbox(self) -> None:
        """Publish this service's committed, unpublished events in order; on failure the relay retries."""
        assert self.engine is not None and self._broker is not None and self.settings is not None

        def pending() -> list[OutboxRecord]:
            assert self.engine is not None
            with Session(self.engine, expire_on_commit=False) as session:
                rows = session.exec(select(OutboxRecord).where(OutboxRecord.service == self.name)
                                    .where(col(OutboxRecord.published_at).is_(None))
                                    .order_by(col(OutboxRecord.id)).limit(200))
                return list(rows)

        def mark(row_id: int | None) -> None:
            assert self.engine is not None
            with Session(self.engine) as session:
                row = session.get(OutboxRecord, row_id)
                if row is not None:
                    row.published_at = utcnow()
                    session.add(row)
                    session.commit()

        for row in await asyncio.to_thread(pending):
            try:
                await publish_raw(self._broker, row.subject, row.payload, row.event_id, self.settings.stream)
            except Exception:
                log.warning("%s: publish of %s deferred to the relay", self.name, row.event_id)
                return
            await asyncio.to_thread(mark, row.id)

    async def _relay_loop(self) -> None:
        """Publishes what a crash between commit and publish left behind (and anything deferred)."""
        while True:
            try:
                await self._publish_outbox()
            except Exception:
                log.exception("%s: outbox relay error", self.name)
            await asyncio.sleep(1.0)

    async def _periodic_loop(self, interval: Callable[[Settings], float], fn: Periodic) -> None:
        assert self.settings is not None and self.engine is not None
        while True:
            await asyncio.sleep(interval(self.settings))
            try:
                await asyncio.to_thread(self._run_periodic, fn)
                await self._publish_outbox()
            except Exception:
                log.exception("%s: periodic job %s failed", self.name, fn.__name__)

    def _run_periodic(self, fn: Periodic) -> None:
        assert self.engine is not None
        with Session(self.engine, expire_on_commit=False) as session:
            events = fn(self._context(session))
            self._stage_outbox(session, events)
            session.commit()
