"""One readable line per event, for `submit`, `status` and `events`."""

from __future__ import annotations

from contracts.base import Event
from contracts.benchmark import CandidateBenchmarked, NoCandidatePassed, SelectionDecided
from contracts.fitting import FitCompleted, FitFailed, MemoryBudgetComputed
from contracts.monitoring import CanaryFailed, CanaryPassed, DriftDetected
from contracts.registry import DeploymentPromoted, ModelRegistered, RolledBack
from contracts.requirements import RequirementsAccepted, RequirementsRejected
from contracts.tuning import AdapterTrained, TuningGated, TuningSkipped
from contracts.workflow import DeadLettered, WorkflowRerouted

MB = 1024 * 1024


def summary(e: Event) -> str:
    if isinstance(e, RequirementsAccepted):
        r = e.context.requirements
        return (f"accepted '{r.name}' v{e.context.version}: {r.quality.metric} ≥ {r.quality.threshold}, "
                f"p95 ≤ {r.latency.p95_ms:g} ms, ≤ ${r.cost.per_1k_tasks_usd:g}/1k on {r.deployment.hardware.profile}")
    if isinstance(e, RequirementsRejected):
        return "rejected:\n  - " + "\n  - ".join(e.errors)
    if isinstance(e, CandidateBenchmarked):
        m = e.measurement
        verdict = "PASS" if e.passed else "miss: " + "; ".join(e.failures)
        return (f"{e.model.candidate} [{e.model.variant}, {e.model.size_class}, {e.model.params / 1e6:.1f}M] "
                f"score {m.score:.3f} p95 {m.latency_ms_p95:.1f} ms ${m.cost_per_1k_usd:.4f}/1k — {verdict}")
    if isinstance(e, SelectionDecided):
        return f"selected {e.model.candidate} (gap {e.quality_gap:.3f}): " + " → ".join(
            f"{d.action}: {d.reason}" for d in e.decisions)
    if isinstance(e, NoCandidatePassed):
        return f"no candidate passed; {e.recommendation.reason}"
    if isinstance(e, MemoryBudgetComputed):
        b = e.budget
        return (f"memory {b.variant}: {b.total_bytes / MB:.1f} MB needed / {b.budget_bytes / MB:.0f} MB "
                f"({'fits' if b.fits else 'does not fit'})")
    if isinstance(e, FitCompleted):
        return f"fit {e.model.variant}: score {e.measurement.score:.3f}, gap {e.quality_gap:.3f}"
    if isinstance(e, FitFailed):
        return f"fit failed: {e.reason}"
    if isinstance(e, AdapterTrained):
        return (f"LoRA adapter trained: {e.steps} steps in {e.seconds:.1f} s, "
                f"loss {e.loss_first:.3f} → {e.loss_last:.3f}")
    if isinstance(e, TuningGated):
        verdict = "passed" if e.passed else "refused: " + "; ".join(e.reasons)
        return (f"gate {verdict} — task {e.task_score_before:.3f} → {e.task_score:.3f}, "
                f"general {e.general_score_before:.3f} → {e.general_score:.3f}")
    if isinstance(e, TuningSkipped):
        return f"tuning skipped: {e.reason}"
    if isinstance(e, ModelRegistered):
        return f"registered {e.deployment} manifest {e.manifest_id[:12]} ({len(e.checksums)} pinned files)"
    if isinstance(e, DeploymentPromoted):
        return f"promoted {e.deployment} → {e.manifest_id[:12]}"
    if isinstance(e, RolledBack):
        return f"rolled back {e.deployment}: {e.from_manifest_id[:12]} → {e.to_manifest_id[:12]}"
    if isinstance(e, CanaryPassed):
        m = e.measurement
        return f"canary passed on {e.deployment}: score {m.score:.3f}, p95 {m.latency_ms_p95:.1f} ms"
    if isinstance(e, CanaryFailed):
        return f"canary FAILED on {e.deployment}: " + "; ".join(e.reasons)
    if isinstance(e, DriftDetected):
        return f"{e.kind} drift on {e.deployment}: {e.baseline:.4g} → {e.observed:.4g} (limit {e.limit:.4g})"
    if isinstance(e, WorkflowRerouted):
        return f"rerouted {e.from_stage} → {e.to_stage} as run {e.new_run_id}: {e.reason}"
    if isinstance(e, DeadLettered):
        return f"dead letter from {e.service} on {e.original_subject}: {e.error}"
    return e.type_name()
