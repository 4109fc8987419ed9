"""Tables owned by the tuning service: every training run and its gate verdict."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from weightflow.contracts.base import utcnow


class TuningRun(SQLModel, table=True):
    __tablename__ = "tuning_runs"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    base_tree_digest: str
    adapter_tree_digest: str
    train_data_digest: str
    task_score_before: float
    task_score: float
    general_before: float
    general_after: float
    passed: bool
    created_at: datetime = Field(default_factory=utcnow)
