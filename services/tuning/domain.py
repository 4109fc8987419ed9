"""When to tune, and whether a trained adapter may ship.

The gate needs both sets: the task score must reach the threshold AND the general-capability score
may drop by no more than the allowed amount, so an adapter that over-fits the task is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.requirements import Requirements


@dataclass(frozen=True)
class TuneDecision:
    tune: bool
    reason: str
    terminal: bool = False


def should_tune(gap: float, req: Requirements, has_data: bool) -> TuneDecision:
    if gap <= 0:
        return TuneDecision(False, "no quality gap: the fitted model meets the threshold")
    if gap > req.quality.tunable_gap:
        return TuneDecision(False, (f"quality gap {gap:.3f} exceeds the tunable gap {req.quality.tunable_gap:.3f}: "
                                    "choose a larger candidate or relax quality.threshold"), terminal=True)
    if not has_data:
        return TuneDecision(False, "a quality gap remains but data.train/data.general are missing", terminal=True)
    return TuneDecision(True, f"quality gap {gap:.3f} ≤ {req.quality.tunable_gap:.3f}: train a LoRA adapter")


def gate(req: Requirements, *, task_score: float, general_before: float, general_after: float) -> list[str]:
    """Reasons the adapter may not ship; empty means it passes."""
    reasons = []
    if task_score < req.quality.threshold:
        reasons.append(f"task score {task_score:.3f} < threshold {req.quality.threshold:.3f}")
    drop = general_before - general_after
    if drop > req.quality.max_general_drop:
        reasons.append(f"general-capability score fell {drop:.3f} ({general_before:.3f} -> {general_after:.3f}), "
                       f"more than the allowed {req.quality.max_general_drop:.3f}: catastrophic forgetting")
    return reasons
