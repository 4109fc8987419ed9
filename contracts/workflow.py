"""Cross-stage events: why work restarted, and messages a service could not handle."""

from __future__ import annotations

from uuid import UUID

from pydantic import Field

from contracts.base import Event, register


@register
class WorkflowRerouted(Event):
    STAGE = "workflow"
    NAME = "rerouted"
    deployment: str
    from_stage: str
    to_stage: str
    reason: str
    new_run_id: UUID


@register
class DeadLettered(Event):
    STAGE = "workflow"
    NAME = "dead_lettered"
    service: str
    original_subject: str
    error: str
    stream_sequence: int | None = None
    deliveries: int
    trace_id: str | None = None
    payload_b64: str = Field(description="the original bytes, base64, for replay")
