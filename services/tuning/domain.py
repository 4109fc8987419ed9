"""Whether a trained adapter may ship: the task score must clear every requirement AND the
general-capability score may drop by no more than the allowed amount, so an adapter that over-fits
the task (catastrophic forgetting) is refused.
"""

from __future__ import annotations

from contracts.measurement import Measurement
from contracts.requirements import Requirements
from contracts.verdict import Miss, Verdict, judge


def gate(req: Requirements, tuned: Measurement, *, general_before: float, general_after: float) -> Verdict:
    verdict = judge(tuned, req, detail="tuned")
    drop = general_before - general_after
    if drop > req.quality.max_general_drop:
        verdict = verdict + Verdict(misses=[Miss(
            kind="general", observed=drop, limit=req.quality.max_general_drop,
            detail=f"general-capability score ({general_before:.3f} -> {general_after:.3f}, catastrophic forgetting)")])
    return verdict
