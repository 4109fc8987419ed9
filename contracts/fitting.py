"""Stage 3: the chosen model fitted to the target hardware's memory, re-benchmarked per change."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from weightflow.contracts.base import Contract, Event, register
from weightflow.contracts.benchmark import ModelArtifact
from weightflow.contracts.measurement import Comparison, Measurement
from weightflow.contracts.requirements import RunContext


class MemoryBudget(Contract):
    variant: str
    params: int
    bytes_per_param: float
    weight_bytes: int
    overhead_fraction: float
    activation_bytes: int = Field(description="activations (or KV cache for decoders) at the serving batch")
    runtime_bytes: int = Field(default=0, description="fixed cost of the runtime: interpreter, torch, tokenizer")
    total_bytes: int
    budget_bytes: int
    fits: bool


class MeasuredPeak(Contract):
    """A variant's peak memory measured at the serving shape in a process of its own: what the fit decision
    rests on. The prediction (`MemoryBudget.total_bytes`) only orders what is tried."""

    peak_bytes: int = Field(description="peak growth over load, warm-up and one serving batch")
    predicted_bytes: int = Field(description="the budget's prediction for the same variant")
    error: float = Field(description="(predicted - measured) / measured: negative under-predicts")
    budget_bytes: int
    fits: bool = Field(description="measured peak <= budget: the fit decision")
    device: str = Field(description="where it was measured (cpu, cuda, cuda:N)")
    target_device: str = Field(description="the hardware profile's device")
    method: str = Field(description="VmHWM growth on CPU, torch.cuda.max_memory_allocated on CUDA")
    batch: int
    context: int = Field(description="tokens per request at the serving shape")
    serve_s: float = Field(description="wall time of the serving batch")
    note: str = Field(default="", description="e.g. measured on another device than the target")


@register
class MemoryBudgetComputed(Event):
    STAGE = "fitting"
    NAME = "memory_budget_computed"
    SCHEMA_VERSION = 3
    budget: MemoryBudget
    measured: MeasuredPeak | None = Field(default=None, description=(
        "the variant's measured peak (v3); None when the prediction ruled it out by more than its error"))


@register
class FitSkipped(Event):
    """The selected model has nothing to fit or tune here (a hosted API): why, for both stages. A
    `FitCompleted` routed to the registry follows it."""

    STAGE = "fitting"
    NAME = "skipped"
    candidate: str
    source: str
    reason: str = Field(description="why fitting does not apply")
    tuning_reason: str = Field(description="why tuning does not apply")


@register
class FitCompleted(Event):
    """The fitted model, and where it goes next: decided here once. This type goes to the registry; a fit that
    needs tuning is a `FitNeedsTuning` (a subclass with the same fields), which goes to tuning."""

    STAGE = "fitting"
    NAME = "completed"
    SCHEMA_VERSION = 5  # 5: comparison
    context: RunContext
    model: ModelArtifact
    measurement: Measurement
    budget: MemoryBudget
    measured: MeasuredPeak | None = Field(default=None, description=(
        "the fitted variant's measured peak, which decided the fit (v4); None for a hosted API"))
    quality_gap: float
    steps: list[str]
    next_stage: Literal["tuning", "registry"]
    tune_reason: str = Field(default="", description="why tuning is needed, when next_stage is tuning")
    comparison: Comparison | None = Field(default=None, description=(
        "a quantized variant against the unquantized model it was made from, paired on the eval rows; None when "
        "nothing was changed (or a sample log is missing)"))


@register
class FitNeedsTuning(FitCompleted):
    """A completed fit that fitting routed to tuning (a quality gap tuning may close, or a failed canary asked for
    it): its own type, so only the tuning service receives it and the topology's edge is the one the data takes.
    Readers that ask for any completed fit (`isinstance(e, FitCompleted)`) see it too; `next_stage` is "tuning"."""

    STAGE = "fitting"
    NAME = "needs_tuning"


@register
class FitFailed(Event):
    STAGE = "fitting"
    NAME = "failed"
    reason: str
    steps: list[str]
