"""Tables owned by the requirements service: every accepted version, per deployment."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, Session, SQLModel, col, select

from contracts.base import utcnow
from contracts.requirements import RunContext


class RequirementsVersion(SQLModel, table=True):
    __tablename__ = "requirements_versions"
    id: int | None = Field(default=None, primary_key=True)
    deployment: str = Field(index=True)
    version: int
    run_id: str = Field(index=True)
    digest: str
    document: str
    context_json: str
    accepted_at: datetime = Field(default_factory=utcnow)


def next_version(session: Session, deployment: str) -> int:
    latest = session.exec(select(RequirementsVersion).where(RequirementsVersion.deployment == deployment)
                          .order_by(col(RequirementsVersion.version).desc())).first()
    return 1 if latest is None else latest.version + 1


def latest_for(session: Session, deployment: str) -> RequirementsVersion | None:
    return session.exec(select(RequirementsVersion).where(RequirementsVersion.deployment == deployment)
                        .order_by(col(RequirementsVersion.version).desc())).first()


def context_of(row: RequirementsVersion) -> RunContext:
    return RunContext.model_validate_json(row.context_json)
