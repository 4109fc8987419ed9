"""Stage 4: LoRA adapters on a frozen base, gated on the task AND a general-capability set."""

from __future__ import annotations

from pydantic import Field

from contracts.base import Contract, Event, register
from contracts.benchmark import Measurement, ModelArtifact
from contracts.fitting import MemoryBudget
from contracts.requirements import RunContext


class AdapterArtifact(Contract):
    tree_digest: str
    base_tree_digest: str
    train_data_digest: str
    method: str = "lora"
    settings: dict[str, float | int | str | list[str]]


@register
class AdapterTrained(Event):
    STAGE = "tuning"
    NAME = "adapter_trained"
    adapter: AdapterArtifact
    steps: int
    seconds: float
    loss_first: float
    loss_last: float


@register
class TuningGated(Event):
    STAGE = "tuning"
    NAME = "gated"
    context: RunContext
    model: ModelArtifact
    adapter: AdapterArtifact
    measurement: Measurement
    budget: MemoryBudget = Field(description="the fitted variant's memory budget, carried to the registry")
    task_score_before: float
    task_score: float
    general_score_before: float
    general_score: float
    passed: bool
    reasons: list[str] = Field(default_factory=list)


@register
class TuningSkipped(Event):
    STAGE = "tuning"
    NAME = "skipped"
    reason: str
    terminal: bool = Field(description="true when the run ends here (gap too large to tune)")
