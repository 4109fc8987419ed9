"""Stage 4: LoRA adapters on a frozen base, gated on the task AND a general-capability set."""

from __future__ import annotations

from pydantic import Field

from weightflow.contracts.base import Contract, Event, register
from weightflow.contracts.benchmark import ModelArtifact
from weightflow.contracts.fitting import MemoryBudget
from weightflow.contracts.measurement import Comparison, Measurement
from weightflow.contracts.requirements import RunContext
from weightflow.contracts.verdict import Verdict


class AdapterArtifact(Contract):
    tree_digest: str
    base_tree_digest: str
    train_data_digest: str
    method: str = "lora"
    settings: dict[str, float | int | str | list[str]]


class LossPoint(Contract):
    """The training loss at a step (or the mean over the steps up to it since the previous point)."""

    step: int = Field(ge=1)
    loss: float


# A curve of more steps is averaged down to this many points: enough to see it fall, small enough for an event.
LOSS_CURVE_POINTS = 200


@register
class AdapterTrained(Event):
    STAGE = "tuning"
    NAME = "adapter_trained"
    SCHEMA_VERSION = 2  # 2: loss_curve
    adapter: AdapterArtifact
    steps: int
    seconds: float
    loss_first: float
    loss_last: float
    loss_curve: list[LossPoint] = Field(
        default_factory=list, max_length=LOSS_CURVE_POINTS,
        description="the training loss step by step (at most 200 points: longer runs averaged over runs of steps); "
                    "empty from a release before it was kept")


@register
class TuningGated(Event):
    STAGE = "tuning"
    NAME = "gated"
    SCHEMA_VERSION = 4  # 4: comparison; Verdict.quality, Miss.note
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
    comparison: Comparison | None = Field(default=None, description=(
        "the base with the adapter against the base alone, paired on the eval rows: what backs 'tuning improved "
        "the task'; None when a sample log is missing"))
    general_comparison: Comparison | None = Field(default=None, description=(
        "the general-capability set before and after, paired (the same rows resampled on both, the score "
        "recomputed): what backs 'lost nothing'; None for a task that reports its general score only"))

    @property
    def passed(self) -> bool:
        return self.verdict.passed


@register
class AdapterRefused(TuningGated):
    """A gate the adapter did not pass: its own type, so the registry never receives it and the loop-back (which
    closes the run on it) receives nothing else. Readers that ask for any gate (`isinstance(e, TuningGated)`) see
    it too; its verdict holds the misses."""

    STAGE = "tuning"
    NAME = "adapter_refused"


@register
class TuningSkipped(Event):
    """Tuning was asked for (FitCompleted.next_stage) but cannot run; the run ends here."""

    STAGE = "tuning"
    NAME = "skipped"
    SCHEMA_VERSION = 2
    reason: str
