"""Compute, then commit: the one short transaction that makes a handler's work count exactly once.

The handler has already run (outside any transaction). Here the inbox row, the handler's own writes
(its `Commit`) and its outgoing events (the outbox) are written together; a redelivered event finds
its inbox row and changes nothing. Shared by the NATS runtime and the in-process runner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from weightflow.contracts.base import Event
from weightflow.contracts.limits import MAX_EVENT_BYTES
from weightflow.shared.bus.errors import PermanentError
from weightflow.shared.bus.service import HandlerContext, HandlerResult, HandlerSpec
from weightflow.shared.bus.streams import run_subject
from weightflow.shared.db import InboxRecord, OutboxRecord
from weightflow.shared.telemetry import current_traceparent

log = logging.getLogger("weightflow.bus")


def already_processed(engine: Engine, service: str, event_id: str) -> bool:
    with Session(engine) as session:
        return session.get(InboxRecord, (service, event_id)) is not None


def stage_outbox(session: Session, service: str, events: Sequence[Event]) -> None:
    trace = current_traceparent()
    for out in events:
        payload = out.to_bytes()
        if len(payload) > MAX_EVENT_BYTES:
            raise PermanentError(f"{out.type_name()} would be {len(payload)} bytes, over the {MAX_EVENT_BYTES}-byte "
                                 "event cap; the input that produced it is too large")
        registration = out.run_registration()
        if registration is not None:
            session.add(OutboxRecord(event_id=f"run-{out.run_id}", service=service, subject=run_subject(out.run_id),
                                     payload=registration.model_dump_json().encode(), trace_context=trace))
        session.add(OutboxRecord(event_id=str(out.event_id), service=service, subject=out.subject(), payload=payload,
                                 trace_context=trace))


def commit(engine: Engine, service: str, event: Event, result: HandlerResult,
           crash_point: Callable[[str], None] = lambda _: None) -> bool:
    """Write inbox row, effects and outbox as one unit. False when another attempt (a replica, or this
    event's earlier delivery) committed first: its effects stand and ours are rolled back."""
    key = (service, str(event.event_id))
    try:
        with Session(engine, expire_on_commit=False) as session:
            if session.get(InboxRecord, key) is not None:
                return False
            outgoing = result(session) if callable(result) else result
            session.add(InboxRecord(service=service, event_id=key[1], event_type=event.type_name(),
                                    run_id=str(event.run_id)))
            stage_outbox(session, service, outgoing)
            session.flush()
            crash_point("mid_transaction")
            session.commit()
    except IntegrityError:
        if already_processed(engine, service, key[1]):
            return False
        raise  # a constraint of the handler's own tables: retried like any error
    return True


def handle_once(ctx: HandlerContext, spec: HandlerSpec[Any], event: Event,
                crash_point: Callable[[str], None] = lambda _: None) -> bool:
    """Run the handler (outside any transaction: the model work) and commit what it decided; False when the event
    was handled already, by an earlier delivery or by a replica that committed first. Both runners' last step."""
    if already_processed(ctx.engine, ctx.service, str(event.event_id)):
        log.info("%s: %s %s already processed", ctx.service, event.type_name(), event.event_id)
        return False
    if not commit(ctx.engine, ctx.service, event, spec.fn(event, ctx), crash_point):
        log.info("%s: %s %s was committed concurrently elsewhere", ctx.service, event.type_name(), event.event_id)
        return False
    return True
