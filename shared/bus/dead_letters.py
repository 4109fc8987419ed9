"""Dead letters: what a service could not handle, set aside with its reason, visible and replayable.

A dead letter is a row (`wf_dead_letters`) and a `DeadLettered` event with a bounded summary; the
payload itself goes to the artifact store's quarantine by digest, so a dead letter can never be larger
than the message it describes (an embedded payload once made one too big to publish, and the outbox
stalled behind it).
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from weightflow.contracts.limits import MAX_ERROR_CHARS, MAX_PREVIEW_BYTES
from weightflow.contracts.workflow import DeadLettered
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.bus.decoding import envelope
from weightflow.shared.bus.processing import stage_outbox
from weightflow.shared.db import DeadLetterRecord


def _uuid(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None


def write_dead_letter(engine: Engine, store: ArtifactStore, service: str, *, subject: str, raw: bytes, reason: str,
                      error: str, stream_sequence: int | None, deliveries: int,
                      trace_id: str | None = None, event_id: str | None = None,
                      run_id: str | None = None) -> DeadLettered | None:
    """Record one dead letter (once per stream sequence); None when it was recorded already.

    `event_id`/`run_id` name the event when the payload is not at hand (a message JetStream dropped)."""
    if raw:
        event_id, run_id = envelope(raw)
    digest = store.quarantine(raw) if raw else None
    letter = DeadLettered(
        run_id=_uuid(run_id) or UUID(int=0), causation_id=_uuid(event_id), service=service,
        original_subject=subject[:200], reason=reason, error=error[:MAX_ERROR_CHARS],
        stream_sequence=stream_sequence, deliveries=deliveries, trace_id=trace_id, payload_digest=digest,
        payload_bytes=len(raw), payload_preview=raw[:MAX_PREVIEW_BYTES].decode("utf-8", errors="replace"))
    with Session(engine) as session:
        if stream_sequence is not None and session.exec(
                select(DeadLetterRecord).where(DeadLetterRecord.service == service)
                .where(DeadLetterRecord.stream_sequence == stream_sequence)).first() is not None:
            return None  # a redelivery of what was dead-lettered already, or a replica's race
        session.add(DeadLetterRecord(service=service, subject=letter.original_subject, reason=reason,
                                     error=letter.error, run_id=run_id, event_id=event_id,
                                     stream_sequence=stream_sequence, deliveries=deliveries, trace_id=trace_id,
                                     payload_digest=digest, payload_bytes=len(raw)))
        stage_outbox(session, service, [letter])
        session.commit()
    return letter
