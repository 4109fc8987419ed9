"""Stage 6: evaluation canaries on the live model, and drift alerts for alerting systems."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

from weightflow.contracts.base import Contract, Event, register
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.verdict import Verdict

DriftKind = Literal["quality", "latency", "cost", "integrity"]


class DeployedModel(Contract):
    """What a manifest serves, so a failure can be pinned on a (candidate, variant, adapter)."""

    candidate: str
    variant: str
    adapter_digest: str | None = None
    requirements_version: int


@register
class CanaryRequested(Event):
    STAGE = "monitoring"
    NAME = "canary_requested"
    SCHEMA_VERSION = 3  # 3: due_at
    deployment: str
    scheduled: bool = Field(default=False, description="true when the schedule (not an operator) asked")
    due_at: datetime | None = Field(default=None, description=(
        "when the schedule wanted the canary to start (its slot): the canary's start minus this is its lag"))


@register
class CanaryPassed(Event):
    STAGE = "monitoring"
    NAME = "canary_passed"
    SCHEMA_VERSION = 4  # 4: verdict
    deployment: str
    manifest_id: str
    manifest_run_id: UUID = Field(description="the run that registered and promoted the manifest")
    model: DeployedModel
    measurement: Measurement
    baseline: Measurement | None = Field(default=None, description="the canary at registration")
    verdict: Verdict = Field(default_factory=Verdict, description=(
        "no misses; its quality call says whether the pass was clear or inconclusive (a canary fails only when "
        "its whole interval is below the threshold)"))


@register
class CanaryFailed(Event):
    """A canary missed the canary rule: on the live model (monitoring), or on a release before promotion
    (the registry's baseline; `before_promotion`), which then never goes live."""

    STAGE = "monitoring"
    NAME = "canary_failed"
    SCHEMA_VERSION = 5  # 5: Verdict.quality, Miss.note
    deployment: str
    manifest_id: str
    manifest_run_id: UUID = Field(description="the run that registered and promoted the manifest")
    model: DeployedModel
    kind: Literal["quality", "latency", "cost", "integrity", "unreachable"] = Field(
        description="the first failure, in that order of precedence")
    verdict: Verdict
    measurement: Measurement | None = None
    baseline: Measurement | None = None
    before_promotion: bool = Field(
        default=False, description="true when the registry ran it on a release before it could go live (the "
                                   "registration baseline): the release was registered, not promoted")
    eval_measurement: Measurement | None = Field(
        default=None, description="before promotion: the eval-set measurement the release was chosen on, so the "
                                  "loop-back can tell a canary set that disagrees with the eval set")

    @property
    def reasons(self) -> list[str]:
        return self.verdict.messages()


@register
class ServingEndpointAnnounced(Event):
    """`weightflow serve` is up (or, `online: false`, shut down cleanly) for a deployment at `url`: the
    canary then probes that endpoint over HTTP, as clients call it, instead of loading its own copy."""

    STAGE = "monitoring"
    NAME = "serving_endpoint_announced"
    deployment: str
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=500, description="the server's base URL (no /v1)")
    online: bool = True
    manifest_id: str | None = Field(default=None, description="what it served when it announced")


@register
class DriftDetected(Event):
    STAGE = "monitoring"
    NAME = "drift_detected"
    deployment: str
    manifest_id: str
    kind: DriftKind
    baseline: float
    observed: float
    limit: float = Field(description="the value past which drift is alerted")

