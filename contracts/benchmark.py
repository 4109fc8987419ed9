"""Stage 2: candidates measured on the team's own eval set, and the selection decision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from weightflow.contracts.base import Contract, Event, register
from weightflow.contracts.measurement import Comparison, Measurement
from weightflow.contracts.requirements import RunContext
from weightflow.contracts.verdict import Verdict

UNQUANTIZED = "fp32"


class ModelArtifact(Contract):
    candidate: str
    source: str = "builtin"
    variant: str = Field(default=UNQUANTIZED, description="'fp32' (as brought) or a quantization scheme")
    tree_digest: str = Field(description="artifact-store tree holding config, weights and tokenizer")
    base_tree_digest: str = Field(description="the unquantized checkpoint this variant came from")
    params: int
    size_class: str

    @property
    def label(self) -> str:
        """How a comparison names it: `minilm-l6 int8`."""
        return f"{self.candidate} {self.variant}"


@register
class BenchmarkRequested(Event):
    STAGE = "benchmark"
    NAME = "requested"
    SCHEMA_VERSION = 3
    context: RunContext
    model: ModelArtifact
    request_id: str = Field(description="correlates the CandidateBenchmarked answer")


@register
class CandidateBenchmarked(Event):
    STAGE = "benchmark"
    NAME = "candidate_benchmarked"
    SCHEMA_VERSION = 4  # 4: Verdict.quality (pass, miss or inconclusive), Miss.note
    model: ModelArtifact
    measurement: Measurement
    verdict: Verdict
    quality_gap: float = Field(description="threshold - score when positive, else 0")

    @property
    def passed(self) -> bool:
        return self.verdict.passed


@register
class CandidateUnavailable(Event):
    """A candidate that could not be measured at all (an API endpoint down, rate-limiting past every
    retry, or answering garbage): left out of selection, with why."""

    STAGE = "benchmark"
    NAME = "candidate_unavailable"
    candidate: str
    source: str
    kind: Literal["unreachable", "rate_limited", "malformed", "refused", "error"]
    reason: str


@register
class VariantBenchmarked(Event):
    """The answer to a BenchmarkRequested (a variant fitting made), addressed to fitting alone."""

    STAGE = "benchmark"
    NAME = "variant_benchmarked"
    SCHEMA_VERSION = 4  # 3: Measurement.via and Measurement.samples; 4: Verdict.quality, Miss.note
    model: ModelArtifact
    measurement: Measurement
    verdict: Verdict
    quality_gap: float
    request_id: str


class Decision(Contract):
    action: Literal["select", "size_up", "relax", "tune", "exclude", "next_variant"]
    reason: str


class FitPlan(Contract):
    """What fitting must do beyond its own rules, decided by selection on a reroute."""

    skip_variants: list[str] = Field(default_factory=list, description="variants that failed a canary")
    tune: bool = Field(default=False, description="tune even without a gap on the eval set (a canary gap)")
    canary_gap: float = Field(default=0.0, description="the quality gap the canary measured, for tuning")


@register
class SelectionDecided(Event):
    STAGE = "benchmark"
    NAME = "selection_decided"
    SCHEMA_VERSION = 4  # 4: comparisons
    context: RunContext
    model: ModelArtifact
    measurement: Measurement
    quality_gap: float
    decisions: list[Decision]
    plan: FitPlan = Field(default_factory=FitPlan)
    comparisons: list[Comparison] = Field(default_factory=list, description=(
        "the selected candidate against each other candidate measured in this run (its size-class rivals and the "
        "smaller classes tried before), paired on the eval rows"))


@register
class NoCandidatePassed(Event):
    STAGE = "benchmark"
    NAME = "no_candidate_passed"
    SCHEMA_VERSION = 2
    decisions: list[Decision]
    recommendation: Decision
