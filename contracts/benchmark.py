"""Stage 2: candidates measured on the team's own eval set, and the selection decision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.base import Contract, Event, register
from contracts.requirements import RunContext

Variant = Literal["fp32", "int8"]


class ModelArtifact(Contract):
    candidate: str
    variant: Variant = "fp32"
    tree_digest: str = Field(description="artifact-store tree holding config, weights and tokenizer")
    base_tree_digest: str = Field(description="the unquantized checkpoint this variant came from")
    params: int
    size_class: str


class Measurement(Contract):
    score: float
    latency_ms_p50: float
    latency_ms_p95: float
    cost_per_1k_usd: float
    throughput_per_s: float
    n: int


@register
class BenchmarkRequested(Event):
    STAGE = "benchmark"
    NAME = "requested"
    context: RunContext
    model: ModelArtifact
    request_id: str = Field(description="correlates the CandidateBenchmarked answer")


@register
class CandidateBenchmarked(Event):
    STAGE = "benchmark"
    NAME = "candidate_benchmarked"
    model: ModelArtifact
    measurement: Measurement
    passed: bool
    failures: list[str] = Field(default_factory=list, description="each requirement missed, with numbers")
    quality_gap: float = Field(description="threshold - score when positive, else 0")
    request_id: str | None = None


class Decision(Contract):
    action: Literal["select", "size_up", "relax", "tune"]
    reason: str


@register
class SelectionDecided(Event):
    STAGE = "benchmark"
    NAME = "selection_decided"
    context: RunContext
    model: ModelArtifact
    measurement: Measurement
    quality_gap: float
    decisions: list[Decision]


@register
class NoCandidatePassed(Event):
    STAGE = "benchmark"
    NAME = "no_candidate_passed"
    decisions: list[Decision]
    recommendation: Decision
