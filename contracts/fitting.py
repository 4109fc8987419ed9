"""Stage 3: the chosen model fitted to the target hardware's memory, re-benchmarked per change."""

from __future__ import annotations

from pydantic import Field

from contracts.base import Contract, Event, register
from contracts.benchmark import Measurement, ModelArtifact
from contracts.requirements import RunContext


class MemoryBudget(Contract):
    variant: str
    params: int
    bytes_per_param: float
    weight_bytes: int
    overhead_fraction: float
    activation_bytes: int = Field(description="activations (or KV cache for decoders) at the serving batch")
    total_bytes: int
    budget_bytes: int
    fits: bool


@register
class MemoryBudgetComputed(Event):
    STAGE = "fitting"
    NAME = "memory_budget_computed"
    budget: MemoryBudget


@register
class FitCompleted(Event):
    STAGE = "fitting"
    NAME = "completed"
    context: RunContext
    model: ModelArtifact
    measurement: Measurement
    budget: MemoryBudget
    quality_gap: float
    steps: list[str]


@register
class FitFailed(Event):
    STAGE = "fitting"
    NAME = "failed"
    reason: str
    steps: list[str]
