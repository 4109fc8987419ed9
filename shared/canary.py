"""The canary's rule, judged like a statistician: against the threshold and the registration baseline, with the
confidence interval its slice size allows.

It lives here, not in the monitoring service, because two stages run it: monitoring on the live model, and
the registry on a release before it may go live (its registration baseline is a pre-promotion canary, so a
release that already fails the rule is never promoted).

Quality fails only when the interval's upper bound is below the threshold, or when the score fell from
the registration baseline by more than `monitoring.quality_drop` and a test says the fall is unlikely
to be noise (Fisher's exact test for 0/1 scores, Welch's t otherwise). Latency and cost fail past the
hard ceilings of the requirements; past the baseline's margins they raise drift alerts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import Requirements
from weightflow.contracts.verdict import Miss, Verdict, quality_call
from weightflow.shared.stats import drop_p_value

DriftKind = Literal["quality", "latency", "cost", "integrity"]
PRECEDENCE = ("integrity", "unreachable", "quality", "latency", "cost")


@dataclass(frozen=True)
class Drift:
    kind: DriftKind
    baseline: float
    observed: float
    limit: float


@dataclass(frozen=True)
class CanaryJudgement:
    verdict: Verdict
    drifts: list[Drift]

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def kind(self) -> str:
        kinds = self.verdict.kinds()
        return next(k for k in PRECEDENCE if k in kinds)


def judge_canary(m: Measurement, req: Requirements, baseline: Measurement | None) -> CanaryJudgement:
    misses: list[Miss] = []
    drifts: list[Drift] = []
    mon = req.monitoring
    metric = req.quality.metric
    upper = m.interval.high if m.interval is not None else m.score
    if upper < req.quality.threshold:
        misses.append(
            Miss(
                kind="quality",
                observed=upper,
                limit=req.quality.threshold,
                detail=f"canary {metric} upper bound (score {m.score:.3f}, "
                f"{(m.interval.confidence if m.interval else mon.confidence):.0%} interval)",
            )
        )
    if baseline is not None:
        allowed = baseline.score - mon.quality_drop
        if m.score < allowed:
            p = drop_p_value(baseline, m)
            if p < 1 - mon.confidence:
                drifts.append(Drift("quality", baseline.score, m.score, allowed))
                misses.append(
                    Miss(
                        kind="quality",
                        observed=m.score,
                        limit=allowed,
                        detail=f"canary {metric}, fallen from its registration baseline "
                        f"{baseline.score:.3f} (p = {p:.2g})",
                    )
                )
    # Speed and cost drift compare like with like: a canary over HTTP (through `weightflow serve`) pays for
    # the network and the server, which a baseline measured in-process did not; the ceilings still apply.
    if baseline is not None and baseline.via == m.via:
        latency_limit = baseline.latency_ms_p95 * (1 + mon.latency_increase_pct / 100)
        if m.latency_ms_p95 > latency_limit:
            drifts.append(Drift("latency", baseline.latency_ms_p95, m.latency_ms_p95, latency_limit))
        cost_limit = baseline.cost_per_1k_usd * (1 + mon.cost_increase_pct / 100)
        if m.cost_per_1k_usd > cost_limit:
            drifts.append(Drift("cost", baseline.cost_per_1k_usd, m.cost_per_1k_usd, cost_limit))
    if m.latency_ms_p95 > req.latency.p95_ms:
        misses.append(
            Miss(kind="latency", observed=m.latency_ms_p95, limit=req.latency.p95_ms, detail="canary latency p95")
        )
    if m.cost_per_1k_usd > req.cost.per_1k_tasks_usd:
        misses.append(
            Miss(kind="cost", observed=m.cost_per_1k_usd, limit=req.cost.per_1k_tasks_usd, detail="canary cost")
        )
    call = quality_call(m, threshold=req.quality.threshold, metric=metric, decided_on="upper_bound",
                        confidence=mon.confidence)
    return CanaryJudgement(Verdict(misses=misses, quality=call), drifts)


def integrity_failure(error: str) -> CanaryJudgement:
    miss = Miss(kind="integrity", observed=0.0, limit=1.0, detail=f"integrity: {error[:300]}")
    return CanaryJudgement(Verdict(misses=[miss]), [Drift("integrity", 1.0, 0.0, 1.0)])


def unreachable_failure(error: str) -> CanaryJudgement:
    """The endpoint clients call gave no usable answer: a failure of its own kind (not quality), so the
    loop-back neither reroutes nor rolls back on it."""
    miss = Miss(kind="unreachable", observed=0.0, limit=1.0, detail=f"endpoint: {error[:400]}")
    return CanaryJudgement(Verdict(misses=[miss]), [])
