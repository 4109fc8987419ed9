"""The decision trail: every decision of a run in the order it was made, each with its reason.

Selection's decisions (size up, select, tune, relax, exclude) are listed one by one; the other stages'
decisions (fit, gate, register, promote, roll back, reroute, halt) are the events that announce them.
Measurements are not decisions: they are plotted, not listed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import CandidateUnavailable, NoCandidatePassed, SelectionDecided
from weightflow.contracts.fitting import FitCompleted, FitFailed, FitSkipped, MemoryBudgetComputed
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, DriftDetected
from weightflow.contracts.registry import DeploymentPromoted, ModelRegistered, PromotionSkipped, RolledBack
from weightflow.contracts.requirements import RequirementsAccepted, RequirementsRejected
from weightflow.contracts.tuning import AdapterTrained, TuningGated, TuningSkipped
from weightflow.contracts.workflow import (
    DeadLettered,
    RequestRefused,
    WorkflowHalted,
    WorkflowRerouted,
    WorkflowResumed,
)
from weightflow.render import summary

ACTIONS = {
    "select": "select",
    "size_up": "size up",
    "relax": "relax",
    "tune": "tune",
    "exclude": "exclude",
    "next_variant": "next variant",
}


@dataclass(frozen=True)
class Step:
    """One line of the trail: when, what was decided (a short word), why, and whether it is bad news."""

    at: datetime
    action: str
    reason: str
    event_type: str
    tone: str = "neutral"  # neutral, good, bad


def _steps(e: Event) -> list[Step]:
    kind = type(e).__name__

    def one(action: str, reason: str, tone: str = "neutral") -> list[Step]:
        return [Step(e.occurred_at, action, reason, kind, tone)]

    if isinstance(e, RequirementsAccepted):
        r = e.context.requirements
        what = (f"reroute {e.context.attempt}: " if e.context.attempt else "") + (
            f"'{r.name}' v{e.context.version} for {r.deployment.name}"
        )
        return one("accept", what + "".join(f"; warning: {w}" for w in e.warnings))
    if isinstance(e, RequirementsRejected):
        return one("reject", "; ".join(e.errors), "bad")
    if isinstance(e, CandidateUnavailable):
        return one("unavailable", f"{e.candidate} ({e.kind}): {e.reason}", "bad")
    if isinstance(e, SelectionDecided | NoCandidatePassed):
        steps = [
            Step(
                e.occurred_at,
                ACTIONS.get(d.action, d.action),
                d.reason,
                kind,
                "good" if d.action == "select" else "neutral",
            )
            for d in e.decisions
        ]
        if isinstance(e, SelectionDecided):
            steps += [Step(e.occurred_at, "compare", c.describe(), kind) for c in e.comparisons]
        if isinstance(e, NoCandidatePassed):
            steps.append(
                Step(
                    e.occurred_at,
                    ACTIONS.get(e.recommendation.action, e.recommendation.action),
                    "no candidate passed; " + e.recommendation.reason,
                    kind,
                    "bad",
                )
            )
        return steps
    if isinstance(e, MemoryBudgetComputed):
        if e.measured is None:
            return one("budget", summary(e), "neutral" if e.budget.fits else "bad")
        peak = e.measured  # what the fit decision rests on; the prediction only ordered what was tried
        return one(
            "budget",
            f"{summary(e)}; measured peak {peak.peak_bytes / 2**20:.1f} MB ({'fits' if peak.fits else 'does not fit'})",
            "neutral" if peak.fits else "bad",
        )
    if isinstance(e, FitCompleted):
        return one("fit", "; ".join(e.steps), "good")  # the last step says where it goes next, and why
    if isinstance(e, FitSkipped | FitFailed | TuningSkipped | PromotionSkipped | RequestRefused):
        bad = isinstance(e, FitFailed | PromotionSkipped | RequestRefused)
        word = {
            "FitSkipped": "skip fit",
            "FitFailed": "fit failed",
            "TuningSkipped": "skip tuning",
            "PromotionSkipped": "not promoted",
            "RequestRefused": "refused",
        }[kind]
        return one(word, summary(e), "bad" if bad else "neutral")
    if isinstance(e, AdapterTrained):
        return one("train", summary(e))
    if isinstance(e, TuningGated):
        return one("gate", summary(e), "good" if e.passed else "bad")
    if isinstance(e, ModelRegistered):
        return one("register", summary(e), "good")
    if isinstance(e, DeploymentPromoted):
        return one("promote", summary(e), "good")
    if isinstance(e, CanaryFailed):
        return one("canary failed", summary(e), "bad")
    if isinstance(e, CanaryPassed):
        return one("canary passed", summary(e), "good")
    if isinstance(e, DriftDetected):
        return one("drift", summary(e), "bad")
    if isinstance(e, RolledBack):
        return one("roll back", summary(e), "bad")
    if isinstance(e, WorkflowRerouted):
        return one("reroute", summary(e))
    if isinstance(e, WorkflowHalted):
        return one("halt", f"{e.reason}. To go on: " + " | ".join(e.advice), "bad")
    if isinstance(e, WorkflowResumed):
        return one("resume", summary(e))
    if isinstance(e, DeadLettered):
        return one("dead letter", summary(e), "bad")
    return []


def trail(events: Sequence[Event]) -> list[Step]:
    """Every decision, in stream order (which is the order the services made them)."""
    return [step for e in events for step in _steps(e)]
