"""Loop-back rules, as pure functions: when a failed canary reroutes, what it carries, when to halt.

* A canary failure of the live manifest under the current requirements version excludes what failed
  (candidate, variant, adapter) and re-enters stage 2 with every exclusion of that version; selection
  then takes the next step of the decision tree.
* At most one reroute is in flight per deployment; at most `monitoring.max_reroutes` per version.
* A release whose registration baseline failed the canary's rule (`before_promotion`) never went live;
  it is rerouted like a live failure. When every candidate has passed the eval set and missed the
  canary set by more than tuning may close, the loop halts at once: the canary set, not the models,
  is the likely fault, and more reroutes would only spend the budget.
* A reroute whose run ends without a model, or a failure past the budget, halts the loop:
  `WorkflowHalted` says every attempt and what to relax or check; an operator's `change` (a new
  version) or `resume` starts it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from weightflow.contracts.monitoring import CanaryFailed
from weightflow.contracts.requirements import Exclusion, Requirements
from weightflow.contracts.workflow import Attempt, Ending


@dataclass(frozen=True)
class Reroute:
    attempt: int
    exclusions: list[Exclusion]


@dataclass(frozen=True)
class Halt:
    reason: str


@dataclass(frozen=True)
class Ignore:
    reason: str


def exclusion(event: CanaryFailed) -> Exclusion:
    gap = 0.0
    if event.kind == "quality" and event.measurement is not None:
        miss = event.verdict.of("quality")
        gap = max(0.0, (miss.limit - event.measurement.score) if miss else 0.0)
    return Exclusion(manifest_id=event.manifest_id, candidate=event.model.candidate, variant=event.model.variant,
                     adapter_digest=event.model.adapter_digest, kind=event.kind, reasons=event.reasons,
                     canary_gap=gap)


@dataclass(frozen=True)
class Rollback:
    kind: Literal["quality", "latency", "cost", "integrity"]
    reason: str


def rollback_of(event: CanaryFailed) -> Rollback | None:
    """Roll the deployment back when its live release failed, except on an outage (an unreachable endpoint is
    not the model's fault: going back would not bring it back) and before promotion (it never went live)."""
    if event.before_promotion or event.kind == "unreachable":
        return None
    return Rollback(event.kind, f"canary failed ({event.kind}): " + "; ".join(event.reasons))


def from_stage(event: CanaryFailed) -> str:
    """Where the failure was seen: the registry's pre-promotion canary, or the monitoring of the live release."""
    return "registry.canary_failed_before_promotion" if event.before_promotion else "monitoring.canary_failed"


def disagrees_with_eval(event: CanaryFailed, req: Requirements) -> bool:
    """A release that passed quality on the eval set and missed it on the canary set by more than tuning may
    close: the two sets disagree about this model (known before promotion, where the eval score is carried)."""
    m, chosen_on = event.measurement, event.eval_measurement
    if event.kind != "quality" or m is None or chosen_on is None:
        return False
    return chosen_on.score >= req.quality.threshold and req.quality.threshold - m.score > req.quality.tunable_gap


def every_candidate_disagrees(candidates: list[str], attempts: list[Attempt]) -> bool:
    """Every candidate of the requirements has a release that passed eval and failed the canary set."""
    disagreeing = {a.candidate for a in attempts if a.canary_disagrees_with_eval}
    return bool(candidates) and set(candidates) <= disagreeing


def on_canary_failure(event: CanaryFailed, *, live_version: int, reroutes: int, max_reroutes: int,
                      halted: bool, in_flight: str | None, exclusions: list[Exclusion],
                      candidates: list[str] | None = None,
                      attempts: list[Attempt] | None = None) -> Reroute | Halt | Ignore:
    """`attempts` include this failure's; `candidates` are the requirements' candidate keys."""
    if event.kind == "unreachable":
        return Ignore("the endpoint did not answer: an outage, not a model that misses its requirements; the "
                      "CanaryFailed alert stands and the next canary checks again")
    if event.model.requirements_version < live_version:
        return Ignore(f"the manifest was registered under v{event.model.requirements_version}; v{live_version} is "
                      "current and its own run decides what goes live")
    if halted:
        return Ignore("rerouting is halted for this version; waiting for `weightflow change` or `resume`")
    if in_flight is not None and in_flight != str(event.manifest_run_id):
        return Ignore(f"a reroute is already in flight (run {in_flight})")
    if every_candidate_disagrees(candidates or [], attempts or []):
        return Halt("every candidate passed the eval set and failed the canary set before going live; no "
                    "model was promoted")
    if reroutes >= max_reroutes:
        return Halt(f"the canary failed again ({event.kind}) after {reroutes} automatic reroute(s), the most "
                    f"monitoring.max_reroutes allows")
    return Reroute(attempt=reroutes + 1, exclusions=with_failure(exclusions, event))


def with_failure(exclusions: list[Exclusion], event: CanaryFailed) -> list[Exclusion]:
    """Exclusions plus what this failure pins on the model. An integrity failure is the storage's fault,
    not the model's: the reroute may register the same combination again (and heals the store)."""
    if event.kind == "integrity" or event.manifest_id in {e.manifest_id for e in exclusions}:
        return list(exclusions)
    return [*exclusions, exclusion(event)]


def attempt_of(event: CanaryFailed, req: Requirements) -> Attempt:
    when = " before promotion" if event.before_promotion else ""
    return Attempt(run_id=event.manifest_run_id, manifest_id=event.manifest_id, candidate=event.model.candidate,
                   variant=event.model.variant, adapter_digest=event.model.adapter_digest,
                   reason=f"canary failed{when} ({event.kind}): " + "; ".join(event.reasons),
                   ending=Ending.FAILED_BEFORE_PROMOTION if event.before_promotion else Ending.CANARY_FAILED,
                   canary_disagrees_with_eval=disagrees_with_eval(event, req))


def advice(req: Requirements, exclusions: list[Exclusion], attempts: list[Attempt]) -> list[str]:
    """Which requirement to relax, or what data to check, from what failed."""
    out: list[str] = []
    kinds = {e.kind for e in exclusions}
    disagreeing = sorted({a.candidate or "?" for a in attempts if a.canary_disagrees_with_eval})
    if disagreeing:
        out.append(f"{', '.join(disagreeing)} passed quality.threshold {req.quality.threshold:.3f} on the eval set "
                   "but missed it on the canary set by more than tuning may close: check that data.canary is drawn "
                   "like data.eval (same labels, same label names, same kind of text); a canary set that disagrees "
                   "with the eval set keeps every model from going live")
    elif "quality" in kinds:
        worst_gap = max(e.canary_gap for e in exclusions if e.kind == "quality")
        out.append(f"every model tried scored below quality.threshold {req.quality.threshold:.3f} on the "
                   f"canary set (by up to {worst_gap:.3f}) while passing it on the eval set: check that data.canary "
                   "is drawn like data.eval (same labels, same kind of text), or relax quality.threshold to "
                   f"{max(0.0, req.quality.threshold - worst_gap):.3f}")
    if "latency" in kinds:
        out.append("live latency exceeded latency.p95_ms: relax it, or choose faster deployment.hardware")
    if "cost" in kinds:
        out.append("live cost exceeded cost.per_1k_tasks_usd: relax it, or choose cheaper deployment.hardware")
    if "integrity" in kinds:
        out.append("artifacts failed their checksums: check the artifact store's disk (`weightflow registry verify`)")
    if not out or any(a.ending in (Ending.NO_CANDIDATE, Ending.FIT_FAILED) for a in attempts):
        out.append("no untried candidate, variant or tuning is left: add a larger candidate to `candidates`, or "
                   "allow more quantization schemes")
    return out
