"""One readable line per event, for `submit`, `status` and `events`."""

from __future__ import annotations

from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import (
    CandidateBenchmarked,
    CandidateUnavailable,
    NoCandidatePassed,
    SelectionDecided,
    VariantBenchmarked,
)
from weightflow.contracts.fitting import FitCompleted, FitFailed, FitSkipped, MemoryBudgetComputed
from weightflow.contracts.measurement import Comparison, Measurement
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, DriftDetected, ServingEndpointAnnounced
from weightflow.contracts.registry import (
    DeploymentPromoted,
    ModelRegistered,
    PromotionAwaitingApproval,
    PromotionDecided,
    PromotionSkipped,
    RolledBack,
)
from weightflow.contracts.requirements import RequirementsAccepted, RequirementsRejected
from weightflow.contracts.tuning import AdapterTrained, TuningGated, TuningSkipped
from weightflow.contracts.verdict import Verdict
from weightflow.contracts.workflow import (
    DeadLettered,
    RequestRefused,
    WorkflowHalted,
    WorkflowRerouted,
    WorkflowResumed,
)

MB = 1024 * 1024


def score(m: Measurement) -> str:
    """`accuracy 0.838 [0.761, 0.894]`: the score with its interval, when it has one."""
    interval = f" [{m.interval.low:.3f}, {m.interval.high:.3f}]" if m.interval is not None else ""
    return f"{m.metric} {m.score:.3f}{interval}"


def _unsettled(verdict: Verdict) -> str:
    """` (inconclusive: …)` for a pass its interval could not settle; empty otherwise (a miss says so itself)."""
    call = verdict.quality
    return f" ({call.describe()})" if call is not None and call.outcome == "inconclusive" and call.passed else ""


def verdict_text(verdict: Verdict, passed: str = "pass") -> str:
    """`pass`, `pass (inconclusive: …)`, or every miss: how a gate's answer reads in a table or a line."""
    return passed + _unsettled(verdict) if verdict.passed else "; ".join(verdict.messages())


def _paired(comparisons: list[Comparison]) -> str:
    return "".join(f"\n  paired: {c.describe()}" for c in comparisons)


def _benchmarked(e: CandidateBenchmarked | VariantBenchmarked) -> str:
    m = e.measurement
    verdict = verdict_text(e.verdict, "PASS") if e.verdict.passed else "miss: " + verdict_text(e.verdict)
    what = "API" if e.model.source == "api" else f"{e.model.variant}, {e.model.size_class}, {e.model.params / 1e6:.1f}M"
    via = f" over HTTP ({m.extra.get('http_retries', 0):g} retries)" if m.via == "http" else ""
    return (f"{e.model.candidate} [{what}] {score(m)} p95 {m.latency_ms_p95:.1f} ms{via} ${m.cost_per_1k_usd:.4f}/1k"
            f" — {verdict}")


def summary(e: Event) -> str:
    if isinstance(e, RequirementsAccepted):
        r = e.context.requirements
        line = (f"accepted '{r.name}' v{e.context.version}: {r.quality.metric} ≥ {r.quality.threshold}, "
                f"p95 ≤ {r.latency.p95_ms:g} ms, ≤ ${r.cost.per_1k_tasks_usd:g}/1k on {r.deployment.hardware.profile}")
        if e.context.attempt:
            line += (f" (reroute {e.context.attempt}, excluding "
                     + ", ".join(f"{x.candidate}/{x.variant}{'+adapter' if x.adapter_digest else ''}"
                                 for x in e.context.exclusions) + ")")
        return line + "".join(f"\n  warning: {w}" for w in e.warnings)
    if isinstance(e, RequirementsRejected):
        return "rejected:\n  - " + "\n  - ".join(e.errors)
    if isinstance(e, CandidateBenchmarked | VariantBenchmarked):
        return _benchmarked(e)
    if isinstance(e, CandidateUnavailable):
        return f"{e.candidate} could not be measured ({e.kind}): {e.reason}"
    if isinstance(e, FitSkipped):
        return f"fitting and tuning skipped: {e.reason}"
    if isinstance(e, ServingEndpointAnnounced):
        return f"{e.deployment} is {'served at' if e.online else 'no longer served at'} {e.url}"
    if isinstance(e, SelectionDecided):
        plan = ""
        if e.plan.skip_variants or e.plan.tune:
            plan = f" [plan: skip {e.plan.skip_variants or 'none'}{', tune' if e.plan.tune else ''}]"
        return f"selected {e.model.candidate} (gap {e.quality_gap:.3f}){plan}: " + " → ".join(
            f"{d.action}: {d.reason}" for d in e.decisions) + _paired(e.comparisons)
    if isinstance(e, NoCandidatePassed):
        return f"no candidate passed; {e.recommendation.reason}"
    if isinstance(e, MemoryBudgetComputed):
        b = e.budget
        return (f"memory {b.variant}: {b.total_bytes / MB:.1f} MB needed / {b.budget_bytes / MB:.0f} MB "
                f"({'fits' if b.fits else 'does not fit'})")
    if isinstance(e, FitCompleted):
        variant = "API" if e.model.source == "api" else e.model.variant
        paired = _paired([e.comparison] if e.comparison else [])
        return f"fit {variant}: {score(e.measurement)}, gap {e.quality_gap:.3f} → {e.next_stage}{paired}"
    if isinstance(e, FitFailed):
        return f"fit failed: {e.reason}"
    if isinstance(e, AdapterTrained):
        return (f"LoRA adapter trained: {e.steps} steps in {e.seconds:.1f} s, "
                f"loss {e.loss_first:.3f} → {e.loss_last:.3f}")
    if isinstance(e, TuningGated):
        verdict = "passed" + _unsettled(e.verdict) if e.passed else "refused: " + "; ".join(e.verdict.messages())
        return (f"gate {verdict} — task {e.task_score_before:.3f} → {e.task_score:.3f}, "
                f"general {e.general_score_before:.3f} → {e.general_score:.3f}"
                + _paired([c for c in (e.comparison, e.general_comparison) if c is not None]))
    if isinstance(e, TuningSkipped):
        return f"tuning skipped: {e.reason}"
    if isinstance(e, ModelRegistered):
        return (f"registered {e.deployment} manifest {e.manifest_id[:12]} ({len(e.checksums)} pinned files; "
                f"canary baseline {score(e.canary_baseline)})")
    if isinstance(e, DeploymentPromoted):
        return f"promoted {e.deployment} → {e.manifest_id[:12]} (requirements v{e.requirements_version})"
    if isinstance(e, PromotionAwaitingApproval):
        live = f"replacing {e.live_manifest_id[:12]}" if e.live_manifest_id else "nothing is live yet"
        return (f"AWAITING APPROVAL: {e.deployment} manifest {e.manifest_id[:12]} (requirements "
                f"v{e.requirements_version}; eval {score(e.measurement)}, canary baseline {score(e.canary_baseline)}; "
                f"{live}): weightflow approve|reject {e.deployment} {e.manifest_id} --reason TEXT")
    if isinstance(e, PromotionDecided):
        return f"{e.decision} {e.manifest_id[:12]} on {e.deployment} by {e.decided_by}: {e.reason}"
    if isinstance(e, PromotionSkipped):
        return f"not promoted: {e.manifest_id[:12]} on {e.deployment}: {e.reason}"
    if isinstance(e, RolledBack):
        how = "automatically" if e.automatic else "on request"
        older = (f"; it was registered under requirements v{e.to_requirements_version}, older than the newest "
                 f"v{e.live_requirements_version}" if e.to_older_requirements else "")
        return (f"rolled back {e.deployment} {how}: {e.from_manifest_id[:12]} → {e.to_manifest_id[:12]} "
                f"({e.reason}){older}")
    if isinstance(e, CanaryPassed):
        m = e.measurement
        via = " over HTTP" if m.via == "http" else ""
        return f"canary passed on {e.deployment}{via}: {score(m)}, p95 {m.latency_ms_p95:.1f} ms{_unsettled(e.verdict)}"
    if isinstance(e, CanaryFailed):
        measured = f" ({score(e.measurement)})" if e.measurement is not None else ""
        if e.before_promotion:
            chosen = f", {score(e.eval_measurement)} on the eval set" if e.eval_measurement is not None else ""
            return (f"canary FAILED before promotion on {e.deployment} [{e.kind}]{measured}{chosen}: "
                    + "; ".join(e.reasons) + f" — {e.manifest_id[:12]} registered, not promoted; the live "
                    "release keeps serving")
        return f"canary FAILED on {e.deployment} [{e.kind}]{measured}: " + "; ".join(e.reasons)
    if isinstance(e, DriftDetected):
        return f"{e.kind} drift on {e.deployment}: {e.baseline:.4g} → {e.observed:.4g} (limit {e.limit:.4g})"
    if isinstance(e, WorkflowRerouted):
        budget = f" (reroute {e.attempt} of at most {e.max_reroutes})" if e.max_reroutes else ""
        return f"rerouted {e.from_stage} → {e.to_stage} as run {e.new_run_id}{budget}: {e.reason}"
    if isinstance(e, WorkflowHalted):
        tried = "; ".join(a.reason for a in e.attempts)
        return (f"HALTED {e.deployment} (requirements v{e.requirements_version}): {e.reason}. Tried: {tried}. "
                f"Advice: " + " | ".join(e.advice))
    if isinstance(e, WorkflowResumed):
        return f"resumed {e.deployment} (requirements v{e.requirements_version})"
    if isinstance(e, RequestRefused):
        return f"refused {e.request} for {e.deployment}: {e.reason}"
    if isinstance(e, DeadLettered):
        return f"dead letter from {e.service} on {e.original_subject} ({e.reason}): {e.error}"
    return e.type_name()
