"""Tables owned by the benchmark service: every measurement taken, reusable across reroutes."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from weightflow.contracts.base import utcnow


class BenchmarkRecord(SQLModel, table=True):
    __tablename__ = "benchmark_results"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    candidate: str
    variant: str
    tree_digest: str
    request_id: str | None = None
    passed: bool
    measurement_key: str = Field(index=True, description="what was measured on what: see app.measurement_key")
    measurement_json: str
    verdict_json: str
    measured_at: datetime = Field(default_factory=utcnow)
