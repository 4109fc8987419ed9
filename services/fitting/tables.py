"""Tables owned by the fitting service: a fit waits here for its variant's re-benchmark."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from weightflow.contracts.base import utcnow


class FitAttempt(SQLModel, table=True):
    __tablename__ = "fitting_attempts"
    request_id: str = Field(primary_key=True)
    run_id: str = Field(index=True)
    selection_json: str = Field(description="the SelectionDecided this fit serves")
    model_json: str = Field(description="the variant being re-benchmarked")
    budget_json: str
    steps_json: str
    remaining_json: str = Field(default="[]", description="schemes still to try if this one fails")
    status: str = "benchmarking"
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
