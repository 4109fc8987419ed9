"""Stage 6: scheduled evaluation canaries on the live model, and drift alerts for alerting systems."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.base import Event, register
from contracts.benchmark import Measurement


@register
class CanaryRequested(Event):
    STAGE = "monitoring"
    NAME = "canary_requested"
    deployment: str


@register
class CanaryPassed(Event):
    STAGE = "monitoring"
    NAME = "canary_passed"
    deployment: str
    manifest_id: str
    measurement: Measurement


@register
class CanaryFailed(Event):
    STAGE = "monitoring"
    NAME = "canary_failed"
    deployment: str
    manifest_id: str
    reasons: list[str]
    measurement: Measurement | None = None


@register
class DriftDetected(Event):
    STAGE = "monitoring"
    NAME = "drift_detected"
    deployment: str
    manifest_id: str
    kind: Literal["quality", "latency", "cost", "integrity"]
    baseline: float
    observed: float
    limit: float = Field(description="the value past which drift is alerted")
