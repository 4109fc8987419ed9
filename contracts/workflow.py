"""Cross-stage events: why work restarted or stopped, operator requests, and undeliverable messages."""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import Field, model_validator

from weightflow.contracts.base import Contract, Event, register
from weightflow.contracts.requirements import Exclusion, RunContext


@register
class WorkflowRerouted(Event):
    STAGE = "workflow"
    NAME = "rerouted"
    SCHEMA_VERSION = 2
    deployment: str
    from_stage: str
    to_stage: str
    reason: str
    new_run_id: UUID
    attempt: int = Field(default=0, description="the n-th automatic reroute under this requirements version")
    max_reroutes: int = 0
    failed: Exclusion | None = Field(default=None, description="what failed and is now excluded")


class RunRecord(Contract):
    """The run registry's entry for an accepted run (stream WF_RUNS, subject wfruns.<run_id>)."""

    run_id: UUID
    deployment: str
    version: int
    requirements_digest: str
    attempt: int = 0

    def refusal(self, event: Event) -> str | None:
        """Why `event` cannot belong to this run (None when it can): it carries the run's context, accepted with
        other requirements."""
        context = getattr(event, "context", None)
        if isinstance(context, RunContext) and (context.requirements_digest != self.requirements_digest
                                                or context.version != self.version):
            return (f"{event.type_name()} {event.event_id} carries requirements v{context.version} "
                    f"({context.requirements_digest[:12]}), but run {event.run_id} was accepted with "
                    f"v{self.version} ({self.requirements_digest[:12]})")
        return None


class Ending(StrEnum):
    """How one attempt of the loop-back ended, typed so that no decision reads a reason string."""

    CANARY_FAILED = "canary_failed"  # it went live and failed its canary
    FAILED_BEFORE_PROMOTION = "failed_before_promotion"  # its registration baseline failed the canary's rule
    NO_CANDIDATE = "no_candidate"
    FIT_FAILED = "fit_failed"
    TUNING_IMPOSSIBLE = "tuning_impossible"
    ADAPTER_REFUSED = "adapter_refused"
    NOT_PROMOTED = "not_promoted"
    DEAD_LETTERED = "dead_lettered"


class Attempt(Contract):
    run_id: UUID
    manifest_id: str | None = None
    candidate: str | None = None
    variant: str | None = None
    adapter_digest: str | None = None
    reason: str
    ending: Ending | None = Field(default=None, description="None: recorded before endings were typed")
    canary_disagrees_with_eval: bool = Field(
        default=False, description="passed quality on the eval set, missed it on the canary set by more than "
                                   "tuning may close")

    @model_validator(mode="before")
    @classmethod
    def _type_a_legacy_ending(cls, data: Any) -> Any:
        """An attempt stored before endings were typed (a loop state written by the previous release) is given
        its ending once, here, from the reason text that release wrote, so no decision reads a reason string
        and a halt after an upgrade keeps its advice."""
        if isinstance(data, dict) and data.get("ending") is None and isinstance(data.get("reason"), str):
            typed = next((e for prefix, e in _LEGACY_REASON_PREFIXES if data["reason"].startswith(prefix)), None)
            if typed is not None:
                data = {**data, "ending": typed}
        return data


# What the release before typed endings wrote at the start of an attempt's reason (services/requirements/app.py).
_LEGACY_REASON_PREFIXES = (
    ("canary failed", Ending.CANARY_FAILED),
    ("no candidate passed", Ending.NO_CANDIDATE),
    ("fit failed", Ending.FIT_FAILED),
    ("tuning impossible", Ending.TUNING_IMPOSSIBLE),
    ("tuned adapter refused", Ending.ADAPTER_REFUSED),
    ("not promoted", Ending.NOT_PROMOTED),
    ("dead-lettered by", Ending.DEAD_LETTERED),
)


@register
class WorkflowHalted(Event):
    """Automatic rerouting stopped for a deployment; it waits for `weightflow change` or `resume`."""

    STAGE = "workflow"
    NAME = "halted"
    SCHEMA_VERSION = 2
    deployment: str
    requirements_version: int
    live_manifest_id: str | None = None
    attempts: list[Attempt]
    reason: str
    advice: list[str] = Field(description="which requirement to relax, or what data to check")


@register
class ResumeRequested(Event):
    STAGE = "workflow"
    NAME = "resume_requested"
    deployment: str


@register
class WorkflowResumed(Event):
    STAGE = "workflow"
    NAME = "resumed"
    deployment: str
    requirements_version: int


@register
class RequestRefused(Event):
    """An operator's request that cannot be carried out: an answer to the operator, not a dead letter."""

    STAGE = "workflow"
    NAME = "request_refused"
    request: str = Field(description="the request's event type")
    deployment: str
    reason: str


@register
class DeadLettered(Event):
    STAGE = "workflow"
    NAME = "dead_lettered"
    SCHEMA_VERSION = 2
    service: str
    original_subject: str
    reason: str = Field(description="invalid, orphan, permanent, exhausted or vanished")
    error: str
    stream_sequence: int | None = None
    deliveries: int
    trace_id: str | None = None
    payload_digest: str | None = Field(default=None, description="sha256 of the payload in the dead-letter store")
    payload_bytes: int = 0
    payload_preview: str = Field(default="", description="the first bytes, for a human")
