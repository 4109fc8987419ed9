"""Selection: smallest size class first; a candidate passes only if it clears every requirement.

Within a class the decision tree is, in order: the best candidate that passes (and has not failed a
canary under this requirements version); the best near miss that tuning may close; a candidate that
failed a canary but has a quantization variant not yet tried; one whose canary gap tuning may close;
else the next size class up. When no class yields one, the closest candidate says which single
requirement to relax. Every step is recorded as a `Decision` with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from weightflow.contracts.benchmark import UNQUANTIZED, Decision, FitPlan
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import Requirements, RunContext
from weightflow.contracts.verdict import Verdict, judge, quality_gap
from weightflow.shared.modeling.sizes import SIZE_CLASS_ORDER


@dataclass(frozen=True)
class Result:
    candidate: str
    size_class: str
    params: int
    measurement: Measurement
    remote: bool = False  # a hosted API: nothing to quantize or tune

    def verdict(self, req: Requirements) -> Verdict:
        return judge(self.measurement, req)


@dataclass(frozen=True)
class Choice:
    result: Result | None
    decision: Decision
    plan: FitPlan = field(default_factory=FitPlan)


def class_order(size_classes: Iterable[str]) -> list[str]:
    present = set(size_classes)
    return [c for c in SIZE_CLASS_ORDER if c in present]


def tunable(result: Result, req: Requirements) -> bool:
    """Misses only on quality, by no more than the gap LoRA tuning is allowed to close (and has weights
    to tune)."""
    gap = quality_gap(result.measurement, req)
    return not result.remote and result.verdict(req).only("quality") and 0 < gap <= req.quality.tunable_gap


def _describe(r: Result) -> str:
    m = r.measurement
    return f"score {m.score:.3f}, p95 {m.latency_ms_p95:.1f} ms, ${m.cost_per_1k_usd:.4f}/1k"


Fits = Callable[[Result, str], bool]


def _untried_variants(result: Result, context: RunContext, fits: Fits) -> list[str]:
    """Variants of a failed candidate not tried yet that are predicted to fit the hardware."""
    allowed = [UNQUANTIZED, *context.requirements.quantization.allowed]
    return [v for v in allowed if not context.excluded(result.candidate, v, adapter=False) and fits(result, v)]


def _can_tune_after_canary(candidate: str, context: RunContext) -> tuple[bool, float, list[str]]:
    """(tuning may close the canary gap, that gap, the variants it failed with) for a failed candidate."""
    req = context.requirements
    failed = [e for e in context.exclusions if e.candidate == candidate]
    if not failed or req.quality.tunable_gap <= 0 or not (context.data.train and context.data.general):
        return False, 0.0, []
    if any(e.adapter_digest is not None for e in failed) or any(e.kind != "quality" for e in failed):
        return False, 0.0, []
    gap = max(e.canary_gap for e in failed)
    return 0 < gap <= req.quality.tunable_gap, gap, sorted({e.variant for e in failed})


def decide_class(results: Sequence[Result], context: RunContext, size_class: str,
                 fits: Fits = lambda result, variant: True) -> Choice:
    """`fits(result, variant)` predicts whether a variant fits the target's memory (shared.modeling.budget)."""
    req = context.requirements
    fresh = [r for r in results if not context.excluded(r.candidate)]
    passing = [r for r in fresh if r.verdict(req).passed]
    if passing:
        best = max(passing, key=lambda r: (r.measurement.score, -r.measurement.cost_per_1k_usd))
        return Choice(best, Decision(action="select", reason=(
            f"{best.candidate} ({size_class}) clears every requirement: {_describe(best)}")))
    near = [r for r in fresh if tunable(r, req)]
    if near:
        best = max(near, key=lambda r: r.measurement.score)
        return Choice(best, Decision(action="tune", reason=(
            f"no {size_class} candidate passes; {best.candidate} misses only quality, by "
            f"{quality_gap(best.measurement, req):.3f} (≤ tunable gap {req.quality.tunable_gap:.3f}): select it "
            "and tune")))
    failed = sorted((r for r in results if context.excluded(r.candidate)), key=lambda r: -r.measurement.score)
    eligible = [r for r in failed if r.verdict(req).passed or tunable(r, req)]
    for r in eligible:
        untried = _untried_variants(r, context, fits)
        skipped = [v for v in [UNQUANTIZED, *req.quantization.allowed] if v not in untried]
        if untried:
            return Choice(r, Decision(action="next_variant", reason=(
                f"{r.candidate} failed its canary as {', '.join(skipped)}; try a variant not tried yet "
                f"({', '.join(untried)})")), FitPlan(skip_variants=skipped))
    for r in (r for r in eligible if not r.remote):
        ok, gap, variants = _can_tune_after_canary(r.candidate, context)
        if ok:
            return Choice(r, Decision(action="tune", reason=(
                f"{r.candidate} failed its canary by {gap:.3f} (≤ tunable gap {req.quality.tunable_gap:.3f}) as "
                f"{', '.join(variants)}: tune it")), FitPlan(tune=True, canary_gap=gap))
    excluded = sorted({r.candidate for r in failed})
    misses = "; ".join(f"{r.candidate}: {', '.join(r.verdict(req).messages())}" for r in fresh)
    why = f"no {size_class} candidate passes" + (f" ({misses})" if misses else "")
    if excluded:
        why += f"; excluded after failed canaries: {', '.join(excluded)}"
    return Choice(None, Decision(action="size_up", reason=why))


def recommend(results: Sequence[Result], req: Requirements) -> Decision:
    """No class passed: name the single requirement whose relaxation would let the closest candidate pass."""
    best: tuple[float, str, str] | None = None
    for r in results:
        relaxations: list[tuple[float, str]] = []
        for miss in r.verdict(req).misses:
            relative = abs(miss.observed - miss.limit) / max(abs(miss.limit), 1e-9)
            field_name = {"quality": "quality.threshold", "latency": "latency.p95_ms",
                          "cost": "cost.per_1k_tasks_usd"}[miss.kind]
            value = f"{miss.observed:.3f}" if miss.kind == "quality" else (
                f"{miss.observed:.1f}" if miss.kind == "latency" else f"{miss.observed:.4f}")
            relaxations.append((relative, f"{field_name} to {value}"))
        if not relaxations:
            continue
        total = sum(x for x, _ in relaxations)
        what = " and ".join(t for _, t in relaxations)
        if best is None or total < best[0]:
            best = (total, r.candidate, what)
    if best is None:
        if results:
            return Decision(action="relax", reason=(
                "every candidate that meets the requirements already failed a canary under this version: add a "
                "candidate, or check data.canary against data.eval"))
        return Decision(action="relax", reason="no candidates were benchmarked; list candidates in the document")
    return Decision(action="relax", reason=(
        f"every size class was tried; the closest is {best[1]}: relax {best[2]}, or add a larger candidate"))
