"""The in-process runner: the services' real handlers, one process, one database, no NATS.

Events are routed by the topology (contracts/topology.py) through the same processing as the NATS
runtime — run check, compute, one commit with inbox and outbox, dead letters for permanent errors —
so a test can drive the whole six-stage decision tree in seconds. Not a replacement for the real bus:
redelivery, acks, permissions and crashes are tested against a real nats-server.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from uuid import UUID

from sqlmodel import Session

from weightflow.contracts.base import Event, parse_event
from weightflow.contracts.workflow import RunRecord
from weightflow.shared.artifacts import open_store
from weightflow.shared.bus.dead_letters import write_dead_letter
from weightflow.shared.bus.errors import PermanentError
from weightflow.shared.bus.outbox import pending
from weightflow.shared.bus.processing import already_processed, commit, stage_outbox
from weightflow.shared.bus.runs import MemoryRuns, check_run
from weightflow.shared.bus.service import Delivery, HandlerContext, HandlerSpec, Service
from weightflow.shared.bus.streams import RUNS_PREFIX
from weightflow.shared.db import OutboxRecord, create_tables, make_engine
from weightflow.shared.settings import Settings


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
        self._queue: deque[tuple[int, str, bytes]] = deque()
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

    def _enqueue(self, subject: str, payload: bytes) -> None:
        self._sequence += 1
        self._queue.append((self._sequence, subject, payload))

    def _step(self) -> None:
        sequence, subject, payload = self._queue.popleft()
        if subject.startswith(f"{RUNS_PREFIX}."):
            record = RunRecord.model_validate_json(payload)
            self.runs.records[UUID(str(record.run_id))] = record
            return
        event = parse_event(payload)
        self.log.append(event)
        for service in self.services.values():
            for spec in service.handlers:
                if spec.event_type is type(event):
                    self._deliver(service, spec, event, Delivery(subject, sequence, 1), payload)

    def _context(self, service: Service, delivery: Delivery | None = None) -> HandlerContext:
        return HandlerContext(service.name, self.store, self.settings, self.engine,
                              delivery or Delivery("", None, 1))

    def _deliver(self, service: Service, spec: HandlerSpec[Event], event: Event, delivery: Delivery,
                 payload: bytes) -> None:
        if not already_processed(self.engine, service.name, str(event.event_id)):
            try:
                if spec.requires_run:
                    check_run(event, self.runs.get(event.run_id))
                commit(self.engine, service.name, event, spec.fn(event, self._context(service, delivery)))
            except PermanentError as exc:
                write_dead_letter(self.engine, self.store, service.name, subject=delivery.subject, raw=payload,
                                  reason=exc.reason, error=f"{type(exc).__name__}: {exc}",
                                  stream_sequence=delivery.stream_sequence, deliveries=1)
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
