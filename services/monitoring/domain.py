"""Judge a canary: requirement breaches fail it; drift past the configured margins raises alerts.

Quality below the threshold, or fallen from the deployment's first canary by more than the allowed
drop, fails the canary (and sends work back to selection). Latency and cost drift relative to the
baseline raise `DriftDetected` for alerting; they fail the canary only past the hard ceilings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contracts.benchmark import Measurement
from contracts.requirements import Requirements

DriftKind = Literal["quality", "latency", "cost", "integrity"]


@dataclass(frozen=True)
class Drift:
    kind: DriftKind
    baseline: float
    observed: float
    limit: float


@dataclass(frozen=True)
class CanaryVerdict:
    failures: list[str]
    drifts: list[Drift]

    @property
    def passed(self) -> bool:
        return not self.failures


def judge_canary(m: Measurement, req: Requirements, baseline: Measurement | None) -> CanaryVerdict:
    failures: list[str] = []
    drifts: list[Drift] = []
    mon = req.monitoring
    if m.score < req.quality.threshold:
        failures.append(f"canary score {m.score:.3f} < threshold {req.quality.threshold:.3f}")
    if m.latency_ms_p95 > req.latency.p95_ms:
        failures.append(f"canary latency p95 {m.latency_ms_p95:.1f} ms > ceiling {req.latency.p95_ms:g} ms")
    if m.cost_per_1k_usd > req.cost.per_1k_tasks_usd:
        failures.append(f"canary cost ${m.cost_per_1k_usd:.4f}/1k > ceiling ${req.cost.per_1k_tasks_usd:g}/1k")
    if baseline is not None:
        quality_limit = baseline.score - mon.quality_drop
        if m.score < quality_limit:
            drifts.append(Drift("quality", baseline.score, m.score, quality_limit))
            failures.append(f"quality drifted {baseline.score:.3f} -> {m.score:.3f} (limit {quality_limit:.3f})")
        latency_limit = baseline.latency_ms_p95 * (1 + mon.latency_increase_pct / 100)
        if m.latency_ms_p95 > latency_limit:
            drifts.append(Drift("latency", baseline.latency_ms_p95, m.latency_ms_p95, latency_limit))
        cost_limit = baseline.cost_per_1k_usd * (1 + mon.cost_increase_pct / 100)
        if m.cost_per_1k_usd > cost_limit:
            drifts.append(Drift("cost", baseline.cost_per_1k_usd, m.cost_per_1k_usd, cost_limit))
    return CanaryVerdict(failures, drifts)
