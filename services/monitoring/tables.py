"""Tables owned by monitoring: what each live deployment is, when its next canary is due, its history."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from weightflow.contracts.base import utcnow


class Watch(SQLModel, table=True):
    __tablename__ = "monitoring_watches"
    deployment: str = Field(primary_key=True)
    manifest_id: str
    run_id: str = Field(description="the run that promoted the live manifest: scheduled canaries belong to it")
    manifest_run_id: str = Field(description="the run that registered the live manifest")
    promoted_event_id: str = Field(description="causation of scheduled canaries: the promotion being watched")
    interval_s: float
    next_due_at: datetime = Field(index=True)  # the scheduler reads due rows only
    updated_at: datetime = Field(default_factory=utcnow)


class CanaryRecord(SQLModel, table=True):
    __tablename__ = "monitoring_canaries"
    id: int | None = Field(default=None, primary_key=True)
    deployment: str = Field(index=True)
    manifest_id: str
    passed: bool
    kind: str | None = None
    measurement_json: str | None
    verdict_json: str
    ran_at: datetime = Field(default_factory=utcnow)


class ServedEndpoint(SQLModel, table=True):
    """Where `weightflow serve` last said it serves a deployment (the canary probes it while online)."""

    __tablename__ = "monitoring_endpoints"
    deployment: str = Field(primary_key=True)
    url: str
    online: bool
    announced_at: datetime
