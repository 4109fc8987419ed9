"""Does this measurement meet the requirements? One typed answer, used by every stage.

A `Verdict` is a list of typed misses (kind, observed, limit). Stages decide on kinds ("misses only
quality", "any miss but quality"), never on message text; messages are rendered from the misses.

Quality is judged with its uncertainty (`QualityCall`): a pass when the score's whole interval clears the
threshold, a miss when the whole interval is below it, and inconclusive when it straddles it; then
`quality.decide_on` rules (the estimate, or the lower bound), and the call says about how many eval rows would
settle it. Argo Rollouts' analysis runs have the same three outcomes.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

from pydantic import Field

from weightflow.contracts.base import Contract
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import Requirements

MissKind = Literal["quality", "latency", "cost", "memory", "general", "integrity", "unreachable"]


class Miss(Contract):
    """One requirement missed: what was observed against which limit."""

    kind: MissKind
    observed: float
    limit: float
    detail: str = Field(default="", description="what was measured, e.g. 'canary accuracy upper bound'")
    note: str = Field(default="", description="what qualifies the miss, e.g. why a quality call was inconclusive")

    def message(self) -> str:
        text = self._message()
        return f"{text} ({self.note})" if self.note else text

    def _message(self) -> str:
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


QualityOutcome = Literal["pass", "miss", "inconclusive"]
# estimate / lower_bound: quality.decide_on at the eval-set gates; upper_bound: the canary, which fails a live
# model only on a clear miss (a canary set is small, and an inconclusive one would take a good model down)
DecidedOn = Literal["estimate", "lower_bound", "upper_bound"]


class QualityCall(Contract):
    """The quality requirement judged with the score's interval, and what the gate did with it."""

    outcome: QualityOutcome = Field(description=(
        "pass: the whole interval clears the threshold; miss: the whole interval is below it; inconclusive: it "
        "straddles the threshold"))
    passed: bool = Field(description="what the gate decided (an inconclusive call passes or not by decided_on)")
    decided_on: DecidedOn
    metric: str
    score: float
    low: float
    high: float
    confidence: float
    n: int = Field(description="rows the score rests on")
    threshold: float
    rows_to_settle: int | None = Field(default=None, description=(
        "inconclusive only: about how many rows in all would put the interval on one side of the threshold, if "
        "the score held (a Wilson interval recomputed at that size; a bootstrap one narrowed as 1/sqrt(rows)); "
        "None when the score sits on the threshold"))

    def describe(self) -> str:
        """`inconclusive: accuracy 0.812 [0.779, 0.841] on 640 rows straddles 0.800; about 2,900 rows would
        settle it`."""
        band = f"{self.metric} {self.score:.3f} [{self.low:.3f}, {self.high:.3f}] on {self.n} rows"
        if self.outcome == "pass":
            return f"pass: {band} clears {self.threshold:.3f}"
        if self.outcome == "miss":
            return f"miss: {band} is below {self.threshold:.3f}"
        settle = (f"about {self.rows_to_settle:,} rows ({self.rows_to_settle - self.n:,} more) would settle it"
                  if self.rows_to_settle is not None
                  else "it sits on the threshold: no number of rows settles it")
        rule = self.decided_on.replace("_", " ")
        return (f"inconclusive: {band} straddles {self.threshold:.3f}; {settle}; decided on the {rule}: "
                f"{'passed' if self.passed else 'missed'}")


def rows_to_settle(score: float, low: float, high: float, n: int, threshold: float) -> int | None:
    """Rows at which an interval of this width (shrinking as 1/sqrt(n)) would stop straddling the threshold,
    the score held where it is: the side of the interval that faces the threshold must shrink to the
    distance between them (for a bootstrap interval; `wilson_rows_to_settle` for a Wilson one)."""
    distance = abs(score - threshold)
    if distance <= 0 or n <= 0:
        return None
    facing = (score - low) if score >= threshold else (high - score)
    return max(n + 1, math.ceil(n * (facing / distance) ** 2))


def _wilson(p: float, n: float, z: float) -> tuple[float, float]:
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return center - half, center + half


def wilson_rows_to_settle(score: float, n: int, threshold: float, confidence: float) -> int | None:
    """The fewest rows at which the Wilson interval of this score (held) no longer straddles the threshold,
    found by bisection: near 0 or 1 a Wilson interval is lopsided and the 1/sqrt(n) rule overstates it by up
    to 2x."""
    if score == threshold or n <= 0:
        return None
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)

    def straddles(rows: int) -> bool:
        low, high = _wilson(score, rows, z)
        return low < threshold < high

    settled = max(n, 1)
    while straddles(settled):
        settled *= 2
        if settled > 10**12:
            return None
    unsettled = max(n, 1) if straddles(max(n, 1)) else 0
    while settled - unsettled > 1:
        middle = (settled + unsettled) // 2
        unsettled, settled = (middle, settled) if straddles(middle) else (unsettled, middle)
    return max(n + 1, settled)


def quality_call(m: Measurement, *, threshold: float, metric: str, decided_on: DecidedOn,
                 confidence: float) -> QualityCall:
    """Pass, miss or inconclusive from the measurement's interval (`confidence` where it has none), and
    whether the gate passes it: an inconclusive call passes on the estimate when the score clears the
    threshold, never on the lower bound, always on the upper bound (the canary's rule)."""
    low, high = (m.interval.low, m.interval.high) if m.interval is not None else (m.score, m.score)
    if m.interval is not None:
        confidence = m.interval.confidence
    outcome: QualityOutcome = "pass" if low >= threshold else "miss" if high < threshold else "inconclusive"
    inconclusive_passes = decided_on == "upper_bound" or (decided_on == "estimate" and m.score >= threshold)
    passed = outcome == "pass" or (outcome == "inconclusive" and inconclusive_passes)
    settle = None
    if outcome == "inconclusive":
        settle = (wilson_rows_to_settle(m.score, m.n, threshold, confidence)
                  if m.interval is not None and m.interval.method == "wilson"
                  else rows_to_settle(m.score, low, high, m.n, threshold))
    return QualityCall(outcome=outcome, passed=passed, decided_on=decided_on, metric=metric, score=m.score,
                       low=low, high=high, confidence=confidence, n=m.n, threshold=threshold, rows_to_settle=settle)


def call_quality(m: Measurement, req: Requirements) -> QualityCall:
    """The quality call for a measurement on the eval set, under the requirements' decide_on."""
    q = req.quality
    return quality_call(m, threshold=q.threshold, metric=q.metric, decided_on=q.decide_on, confidence=q.confidence)


class Verdict(Contract):
    misses: list[Miss] = Field(default_factory=list)
    quality: QualityCall | None = Field(default=None, description=(
        "the quality requirement judged with its interval (pass, miss or inconclusive); None from an earlier "
        "release, or where no score was judged"))

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
        return Verdict(misses=[*self.misses, *other.misses], quality=self.quality or other.quality)


def quality_gap(m: Measurement, req: Requirements) -> float:
    """How far the score the gate decides on is below the threshold (0 when it clears it): the estimate, or
    under `decide_on: lower_bound` the interval's lower bound."""
    judged = m.interval.low if req.quality.decide_on == "lower_bound" and m.interval is not None else m.score
    return max(0.0, req.quality.threshold - judged)


def judge(m: Measurement, req: Requirements, *, detail: str = "") -> Verdict:
    """Every requirement a measurement misses; a candidate passes only if it clears them all."""
    prefix = f"{detail} " if detail else ""
    misses: list[Miss] = []
    call = call_quality(m, req)
    if not call.passed:
        strict = call.decided_on == "lower_bound"  # judged on the lower bound, as quality_gap is
        note = ""
        if call.outcome == "inconclusive":
            note = (f"inconclusive: [{call.low:.3f}, {call.high:.3f}] on {call.n} rows straddles the threshold"
                    + (f"; about {call.rows_to_settle:,} rows ({call.rows_to_settle - call.n:,} more) would "
                       "settle it" if call.rows_to_settle else ""))
        misses.append(Miss(kind="quality", observed=call.low if strict else m.score, limit=call.threshold,
                           detail=f"{prefix}{req.quality.metric}{' lower bound' if strict else ''}", note=note))
    if m.latency_ms_p95 > req.latency.p95_ms:
        misses.append(Miss(kind="latency", observed=m.latency_ms_p95, limit=req.latency.p95_ms,
                           detail=f"{prefix}latency p95"))
    if m.cost_per_1k_usd > req.cost.per_1k_tasks_usd:
        misses.append(Miss(kind="cost", observed=m.cost_per_1k_usd, limit=req.cost.per_1k_tasks_usd,
                           detail=f"{prefix}cost"))
    return Verdict(misses=misses, quality=call)
