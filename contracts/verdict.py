"""Does this measurement meet the requirements? One typed answer, used by every stage.

A `Verdict` is a list of typed misses (kind, observed, limit). Stages decide on kinds ("misses only
quality", "any miss but quality"), never on message text; messages are rendered from the misses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.base import Contract
from contracts.measurement import Measurement
from contracts.requirements import Requirements

MissKind = Literal["quality", "latency", "cost", "memory", "general", "integrity", "unreachable"]


class Miss(Contract):
    """One requirement missed: what was observed against which limit."""

    kind: MissKind
    observed: float
    limit: float
    detail: str = Field(default="", description="what was measured, e.g. 'canary accuracy upper bound'")

    def message(self) -> str:
        what = self.detail or self.kind
        if self.kind == "quality":
            return f"{what} {self.observed:.3f} < threshold {self.limit:.3f}"
        if self.kind == "latency":
            return f"{what} {self.observed:.1f} ms > {self.limit:g} ms"
        if self.kind == "cost":
            return f"{what} ${self.observed:.4f}/1k > ${self.limit:g}/1k"
        if self.kind == "memory":
            return f"{what} {self.observed / 2**20:.1f} MB > {self.limit / 2**20:.0f} MB"
        if self.kind == "general":
            return f"{what} fell {self.observed:.3f}, more than the allowed {self.limit:.3f}"
        if self.kind in ("unreachable", "integrity"):
            return what  # the detail is the whole story
        return f"{what}: observed {self.observed:g}, limit {self.limit:g}"


class Verdict(Contract):
    misses: list[Miss] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.misses

    def kinds(self) -> set[str]:
        return {m.kind for m in self.misses}

    def only(self, *kinds: MissKind) -> bool:
        """True when it misses something, and nothing outside `kinds`."""
        return bool(self.misses) and self.kinds() <= set(kinds)

    def of(self, kind: MissKind) -> Miss | None:
        return next((m for m in self.misses if m.kind == kind), None)

    def messages(self) -> list[str]:
        return [m.message() for m in self.misses]

    def __add__(self, other: Verdict) -> Verdict:
        return Verdict(misses=[*self.misses, *other.misses])


def quality_gap(m: Measurement, req: Requirements) -> float:
    """How far the score is below the threshold (0 when it clears it)."""
    return max(0.0, req.quality.threshold - m.score)


def judge(m: Measurement, req: Requirements, *, detail: str = "") -> Verdict:
    """Every requirement a measurement misses; a candidate passes only if it clears them all."""
    prefix = f"{detail} " if detail else ""
    misses: list[Miss] = []
    if m.score < req.quality.threshold:
        misses.append(Miss(kind="quality", observed=m.score, limit=req.quality.threshold,
                           detail=f"{prefix}{req.quality.metric}"))
    if m.latency_ms_p95 > req.latency.p95_ms:
        misses.append(Miss(kind="latency", observed=m.latency_ms_p95, limit=req.latency.p95_ms,
                           detail=f"{prefix}latency p95"))
    if m.cost_per_1k_usd > req.cost.per_1k_tasks_usd:
        misses.append(Miss(kind="cost", observed=m.cost_per_1k_usd, limit=req.cost.per_1k_tasks_usd,
                           detail=f"{prefix}cost"))
    return Verdict(misses=misses)
