"""What a model did on a data split: score with its confidence interval, latency, cost.

Every stage judges the same `Measurement`, so a number taken in benchmarking means the same thing in
fitting, tuning, registration and the canary.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.base import Contract


class Interval(Contract):
    """A confidence interval for the score on this many rows (Wilson for 0/1 scores, else bootstrap)."""

    low: float
    high: float
    confidence: float = 0.95
    method: Literal["wilson", "bootstrap", "none"]


class Measurement(Contract):
    score: float
    latency_ms_p50: float
    latency_ms_p95: float
    cost_per_1k_usd: float
    throughput_per_s: float
    n: int
    metric: str = "accuracy"
    score_std: float | None = Field(default=None, description="per-row standard deviation of the score")
    binary: bool = Field(default=True, description="each row scores 0 or 1 (accuracy-like)")
    interval: Interval | None = None
    via: Literal["process", "http"] = Field(
        default="process", description="the model called in the measuring process, or over HTTP as a client")
    extra: dict[str, float] = Field(default_factory=dict,
                                    description="other metrics: macro_f1, per-label precision/recall, …")

    @property
    def correct(self) -> int:
        """Rows scored 1, for 0/1 metrics."""
        return round(self.score * self.n)
