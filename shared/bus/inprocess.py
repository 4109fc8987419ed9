"""The in-process runner: the services' real handlers, one process, one database, no NATS.

Events are routed by the topology (contracts/topology.py) through the same delivery pipeline as the NATS
runtime (shared.bus.delivery: run check, compute, one commit with inbox and outbox, retries within the delivery
budget, dead letters), so a test can drive the whole six-stage decision tree in seconds. Not a replacement for
the real bus: acks, redelivery deadlines, permissions and crashes are tested against a real nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from uuid import UUID

from sqlmodel import Session

from weightflow.contracts.base import Event, parse_event
from weightflow.contracts.workflow import RunRecord
from weightflow.shared.artifacts import open_store
from weightflow.shared.bus.dead_letters import write_dead_letter
from weightflow.shared.bus.delivery import DeadLetter, Done, HandBack, Message, Retry, deliver
from weightflow.shared.bus.outbox import pending
from weightflow.shared.bus.processing import handle_once, stage_outbox
from weightflow.shared.bus.runs import MemoryRuns
from weightflow.shared.bus.service import Delivery, HandlerContext, Service
from weightflow.shared.bus.streams import RUNS_PREFIX
from weightflow.shared.db import OutboxRecord, create_tables, make_engine
from weightflow.shared.settings import Settings


@dataclass(frozen=True)
class _Queued:
    sequence: int
    subject: str
    payload: bytes
    retry: tuple[Service, Message] | None = None  # a redelivery goes to the one handler that failed


class _ServiceRunner:
    """One service as the pipeline's runner (shared.bus.delivery.Runner)."""

    stopping = False

    def __init__(self, owner: InProcessRunner, service: Service) -> None:
        self.owner, self.service, self.name, self.settings = owner, service, service.name, owner.settings

    @contextlib.asynccontextmanager
    async def working_on(self, message: Message) -> AsyncIterator[None]:
        yield  # no delivery deadline to keep alive

    async def run_record(self, run_id: UUID) -> RunRecord | None:
        return self.owner.runs.get(run_id)

    async def process(self, message: Message) -> bool:
        return handle_once(self.owner._context(self.service, message.delivery), message.spec, message.event)


class InProcessRunner:
    def __init__(self, services: Sequence[Service], settings: Settings) -> None:
        self.services = {s.name: s for s in services}
        for service in services:
            service.check_complete()
        self.settings = settings
        self.engine = make_engine(settings.resolved_database_url())
        create_tables(self.engine)
        self.store = open_store(settings)
        self.runs = MemoryRuns()
        self.log: list[Event] = []
        self._runners = {s.name: _ServiceRunner(self, s) for s in services}
        self._queue: deque[_Queued] = deque()
        self._sequence = 0

    def publish(self, event: Event) -> None:
        self._enqueue(event.subject(), event.to_bytes())

    def run_until_idle(self, max_events: int = 2000) -> list[Event]:
        """Deliver until nothing is left; returns the events delivered in this call, in order."""
        start = len(self.log)
        while self._queue:
            if len(self.log) - start >= max_events:
                raise RuntimeError(f"more than {max_events} events without going idle: a loop?")
            self._step()
        return self.log[start:]

    def tick(self, service: str) -> None:
        """Run a service's periodic jobs once (the schedule, in a test's own time)."""
        svc = self.services[service]
        for _, job in svc.periodics:
            result = job(self._context(svc))
            if result is not None:
                with Session(self.engine, expire_on_commit=False) as session:
                    stage_outbox(session, svc.name, result(session))
                    session.commit()
            self._drain(svc)

    def _enqueue(self, subject: str, payload: bytes, retry: tuple[Service, Message] | None = None) -> None:
        self._sequence += 1
        self._queue.append(_Queued(self._sequence, subject, payload, retry))

    def _step(self) -> None:
        queued = self._queue.popleft()
        if queued.retry is not None:
            service, message = queued.retry
            self._deliver(service, message, queued.payload)
            return
        if queued.subject.startswith(f"{RUNS_PREFIX}."):
            record = RunRecord.model_validate_json(queued.payload)
            self.runs.records[UUID(str(record.run_id))] = record
            return
        event = parse_event(queued.payload)
        self.log.append(event)
        for service in self.services.values():
            for spec in service.handlers:
                if spec.event_type is type(event):
                    message = Message(spec, event, Delivery(queued.subject, queued.sequence, 1))
                    self._deliver(service, message, queued.payload)

    def _context(self, service: Service, delivery: Delivery | None = None) -> HandlerContext:
        return HandlerContext(service.name, self.store, self.settings, self.engine,
                              delivery or Delivery("", None, 1))

    def _deliver(self, service: Service, message: Message, payload: bytes) -> None:
        match asyncio.run(deliver(self._runners[service.name], message)):
            case Retry():  # redelivered after what is queued now (no clock here: the delay is not waited)
                d = message.delivery
                again = dataclasses.replace(message, delivery=dataclasses.replace(d, deliveries=d.deliveries + 1))
                self._enqueue(d.subject, payload, retry=(service, again))
            case DeadLetter(reason=reason, error=error):
                write_dead_letter(self.engine, self.store, service.name, subject=message.delivery.subject,
                                  raw=payload, reason=reason, error=error,
                                  stream_sequence=message.delivery.stream_sequence,
                                  deliveries=message.delivery.deliveries)
            case Done() | HandBack():
                pass
        self._drain(service)

    def _drain(self, service: Service) -> None:
        for row in pending(self.engine, service.name):
            with Session(self.engine) as session:
                stored = session.get(OutboxRecord, row.id)
                assert stored is not None
                stored.published_at = stored.created_at
                session.add(stored)
                session.commit()
            self._enqueue(row.subject, row.payload)
