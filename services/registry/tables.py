"""Tables owned by the registry: manifests, and each deployment's release history and live position."""

from __future__ import annotations

import json
from datetime import datetime

from sqlmodel import Field, SQLModel

from weightflow.contracts.base import utcnow


class ManifestRecord(SQLModel, table=True):
    __tablename__ = "registry_manifests"
    manifest_id: str = Field(primary_key=True)
    deployment: str = Field(index=True)
    run_id: str
    runbook_digest: str
    requirements_version: int
    canary_passed: bool = Field(default=False, description="a canary passed while it was live")
    created_at: datetime = Field(default_factory=utcnow)


class DeploymentRecord(SQLModel, table=True):
    __tablename__ = "registry_deployments"
    name: str = Field(primary_key=True)
    releases_json: str = Field(default="[]", description="manifest ids in promotion order")
    position: int = Field(default=-1, description="index of the live release in releases_json")
    latest_version: int = Field(default=0, description="the newest requirements version accepted for it")
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def releases(self) -> list[str]:
        return list(json.loads(self.releases_json))

    @property
    def live(self) -> str | None:
        releases = self.releases
        return releases[self.position] if 0 <= self.position < len(releases) else None
