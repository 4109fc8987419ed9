"""Selection logic: smallest size class first, a candidate passes only if it clears every requirement.

When a class has no passing candidate the decision (size up, tune a near miss, or relax a requirement)
is recorded with its reason, so the trail explains why a bigger or tuned model was chosen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from contracts.benchmark import Decision, Measurement
from contracts.requirements import Requirements
from shared.measure import judge

SIZE_CLASS_ORDER = ("xs", "s", "m", "l", "xl")


@dataclass(frozen=True)
class Result:
    candidate: str
    size_class: str
    params: int
    measurement: Measurement

    def verdict(self, req: Requirements) -> tuple[bool, list[str], float]:
        return judge(self.measurement, req)


def class_order(size_classes: Iterable[str]) -> list[str]:
    present = set(size_classes)
    return [c for c in SIZE_CLASS_ORDER if c in present]


def tunable(result: Result, req: Requirements) -> bool:
    """Misses only on quality, by no more than the gap LoRA tuning is allowed to close."""
    passed, failures, gap = result.verdict(req)
    only_quality = len(failures) == 1 and failures[0].startswith("quality")
    return not passed and only_quality and 0 < gap <= req.quality.tunable_gap


def decide_class(results: Sequence[Result], req: Requirements, size_class: str) -> tuple[Result | None, Decision]:
    """Pick from one size class: the best passing candidate, else the best tunable near miss, else size up."""
    passing = [r for r in results if r.verdict(req)[0]]
    if passing:
        best = max(passing, key=lambda r: (r.measurement.score, -r.measurement.cost_per_1k_usd))
        return best, Decision(action="select", reason=(
            f"{best.candidate} ({size_class}) clears every requirement: score {best.measurement.score:.3f}, "
            f"p95 {best.measurement.latency_ms_p95:.1f} ms, ${best.measurement.cost_per_1k_usd:.4f}/1k"))
    near = [r for r in results if tunable(r, req)]
    if near:
        best = max(near, key=lambda r: r.measurement.score)
        gap = req.quality.threshold - best.measurement.score
        return best, Decision(action="tune", reason=(
            f"no {size_class} candidate passes; {best.candidate} misses only quality, by {gap:.3f} "
            f"(≤ tunable gap {req.quality.tunable_gap:.3f}): select it and tune"))
    misses = "; ".join(f"{r.candidate}: {', '.join(r.verdict(req)[1])}" for r in results)
    return None, Decision(action="size_up", reason=f"no {size_class} candidate passes ({misses})")


def recommend(results: Sequence[Result], req: Requirements) -> Decision:
    """No class passed: name the single requirement whose relaxation would let the closest candidate pass."""
    best: tuple[float, str, str] | None = None
    for r in results:
        m = r.measurement
        relaxations: list[tuple[float, str]] = []
        if m.score < req.quality.threshold:
            relaxations.append(((req.quality.threshold - m.score) / max(req.quality.threshold, 1e-9),
                                f"quality.threshold to {m.score:.3f}"))
        if m.latency_ms_p95 > req.latency.p95_ms:
            relaxations.append(((m.latency_ms_p95 - req.latency.p95_ms) / req.latency.p95_ms,
                                f"latency.p95_ms to {m.latency_ms_p95:.1f}"))
        if m.cost_per_1k_usd > req.cost.per_1k_tasks_usd:
            relaxations.append(((m.cost_per_1k_usd - req.cost.per_1k_tasks_usd) / req.cost.per_1k_tasks_usd,
                                f"cost.per_1k_tasks_usd to {m.cost_per_1k_usd:.4f}"))
        total = sum(x for x, _ in relaxations)
        what = " and ".join(t for _, t in relaxations)
        if best is None or total < best[0]:
            best = (total, r.candidate, what)
    if best is None:
        return Decision(action="relax", reason="no candidates were benchmarked; list candidates in the document")
    return Decision(action="relax", reason=(
        f"every size class was tried; the closest is {best[1]}: relax {best[2]}, or add a larger candidate"))
