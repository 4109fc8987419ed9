"""Whether a trained adapter may ship: the task score must clear every requirement AND the
general-capability score may drop by no more than the allowed amount, so an adapter that over-fits
the task (catastrophic forgetting) is refused.

Both are judged as the requirements' `quality.decide_on` says: on the estimate, the drop itself; on the lower
bound, the largest drop the paired comparison of the general set allows (its interval's far end), so a strict
bar refuses an adapter that cannot show it lost at most that much.
"""

from __future__ import annotations

from weightflow.contracts.measurement import Comparison, Measurement
from weightflow.contracts.requirements import Requirements
from weightflow.contracts.verdict import Miss, Verdict, judge


def gate(req: Requirements, tuned: Measurement, *, general_before: float, general_after: float,
         general: Comparison | None = None) -> Verdict:
    verdict = judge(tuned, req, detail="tuned")
    drop = general_before - general_after
    strict = req.quality.decide_on == "lower_bound" and general is not None
    judged = -general.interval.low if strict and general is not None else drop
    if judged > req.quality.max_general_drop:
        bound = (f", {general.interval.confidence:.0%} upper bound of the drop" if strict and general is not None
                 else "")
        verdict = verdict + Verdict(misses=[Miss(
            kind="general", observed=judged, limit=req.quality.max_general_drop,
            detail=f"general-capability score ({general_before:.3f} -> {general_after:.3f}{bound}, catastrophic "
                   "forgetting)",
            note=general.describe() if general is not None else "")])
    return verdict
