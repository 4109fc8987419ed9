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


class MeasuredPeakRecord(SQLModel, table=True):
    """A peak measured once per artifact and shape: the same tree's bytes at the same serving shape, on the same
    device kind, with the same weightflow and torch, measure the same (up to the allocator's spread), and a
    measurement costs a fresh interpreter (about 8 s of CPU for MiniLM-L3 on 2 cores). N runs of one model paid it
    N times, which capped a stack's runs per minute at fitting's one measurement at a time."""

    __tablename__ = "fitting_peaks"
    key: str = Field(primary_key=True, description="sha256 of what the measurement depends on (see fitting.peaks)")
    tree_digest: str = Field(index=True)
    peak_json: str = Field(description="the child's PeakMeasured")
    run_id: str = Field(description="the run that measured it")
    measured_at: datetime = Field(default_factory=utcnow)
