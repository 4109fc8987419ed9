"""Tables owned by the requirements service: accepted versions, runs, and each deployment's loop-back state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, Session, SQLModel, col, select

from weightflow.contracts.base import utcnow
from weightflow.contracts.requirements import RunContext


class RequirementsVersion(SQLModel, table=True):
    """One accepted version; `sequence` is the submission's stream sequence: versions follow publish order."""

    __tablename__ = "requirements_versions"
    __table_args__ = (UniqueConstraint("deployment", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    deployment: str = Field(index=True)
    version: int
    sequence: int = Field(description="stream sequence of the submission that created it")
    run_id: str = Field(index=True)
    digest: str
    document: str
    context_json: str
    accepted_at: datetime = Field(default_factory=utcnow)

    def context(self) -> RunContext:
        return RunContext.model_validate_json(self.context_json)


class RunRow(SQLModel, table=True):
    """Every run this service opened: the submitted ones and the automatic reroutes."""

    __tablename__ = "requirements_runs"
    run_id: str = Field(primary_key=True)
    deployment: str = Field(index=True)
    version: int
    attempt: int = 0
    open: bool = True
    outcome: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class LoopState(SQLModel, table=True):
    """The loop-back of one deployment under one requirements version: budget, exclusions, halt."""

    __tablename__ = "requirements_loop"
    deployment: str = Field(primary_key=True)
    version: int = Field(primary_key=True)
    reroutes: int = 0
    in_flight_run_id: str | None = None
    halted: bool = False
    exclusions_json: str = "[]"
    attempts_json: str = "[]"
    updated_at: datetime = Field(default_factory=utcnow)


def latest_version(session: Session, deployment: str) -> RequirementsVersion | None:
    return session.exec(select(RequirementsVersion).where(RequirementsVersion.deployment == deployment)
                        .order_by(col(RequirementsVersion.version).desc())).first()


def loop_state(session: Session, deployment: str, version: int) -> LoopState:
    return session.get(LoopState, (deployment, version)) or LoopState(deployment=deployment, version=version)


def open_reroute(session: Session, run_id: str) -> LoopState | None:
    return session.exec(select(LoopState).where(LoopState.in_flight_run_id == run_id)).first()
