"""Stage 4: LoRA adapters on a frozen base, gated on the task AND a general-capability set."""

from __future__ import annotations

from pydantic import Field

from contracts.base import Contract, Event, register
from contracts.benchmark import ModelArtifact
from contracts.fitting import MemoryBudget
from contracts.measurement import Measurement
from contracts.requirements import RunContext
from contracts.verdict import Verdict


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
    SCHEMA_VERSION = 3
    context: RunContext
    model: ModelArtifact
    adapter: AdapterArtifact
    measurement: Measurement
    budget: MemoryBudget = Field(description="the fitted variant's memory budget, carried to the registry")
    task_score_before: float
    task_score: float
    general_score_before: float
    general_score: float
    verdict: Verdict

    @property
    def passed(self) -> bool:
        return self.verdict.passed


@register
class TuningSkipped(Event):
    """Tuning was asked for (FitCompleted.next_stage) but cannot run; the run ends here."""

    STAGE = "tuning"
    NAME = "skipped"
    SCHEMA_VERSION = 2
    reason: str
