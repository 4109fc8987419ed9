"""Tables owned by the registry: manifests and which one is live per deployment."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from contracts.base import utcnow


class ManifestRecord(SQLModel, table=True):
    __tablename__ = "registry_manifests"
    manifest_id: str = Field(primary_key=True)
    deployment: str = Field(index=True)
    run_id: str
    runbook_digest: str
    created_at: datetime = Field(default_factory=utcnow)


class DeploymentRecord(SQLModel, table=True):
    __tablename__ = "registry_deployments"
    name: str = Field(primary_key=True)
    live_manifest_id: str
    history_json: str = Field(default="[]", description="manifest ids promoted before, oldest first")
    updated_at: datetime = Field(default_factory=utcnow)
