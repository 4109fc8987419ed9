"""The run report as Markdown tables (`weightflow report`; `--html` writes the page with plots, `weightflow.pages`).

Built from the events alone, like `status`: the requirements, every candidate measured (score with its
interval, the other metrics, per-label precision and recall, latency, cost, verdict), the selection's
decision trail, memory budgets and fitting steps, the tuning gate, registration, canaries, the
loop-back, and each evaluation's worst rows from its sample log (where the store is readable).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import UUID

from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import CandidateBenchmarked, NoCandidatePassed, SelectionDecided, VariantBenchmarked
from weightflow.contracts.fitting import FitCompleted, FitFailed, MemoryBudgetComputed
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, DriftDetected
from weightflow.contracts.registry import DeploymentPromoted, ModelRegistered, RolledBack
from weightflow.contracts.requirements import RequirementsAccepted
from weightflow.contracts.tuning import AdapterTrained, TuningGated
from weightflow.contracts.workflow import WorkflowHalted, WorkflowRerouted
from weightflow.evaluations import evaluations, read_rows, shown
from weightflow.pages.figures import benchmarked
from weightflow.pages.page import other_metrics
from weightflow.render import score, verdict_text

MB = 1024 * 1024


def _of(events: Sequence[Event], *types: type[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, types)]


def _candidates(events: Sequence[Event]) -> list[str]:
    # The other metrics are the ones this task reported (a generation run has no accuracy or macro-F1: no NaN).
    rows = [
        "| candidate | variant | size | params | score | other metrics | p50 / p95 ms | $ / 1k | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in benchmarked(events):
        m = e.measurement
        verdict = verdict_text(e.verdict)
        rows.append(
            f"| {e.model.candidate} | {e.model.variant} | {e.model.size_class} | {e.model.params / 1e6:.1f}M "
            f"| {score(m)} | {other_metrics(m)} | {m.latency_ms_p50:.1f} / {m.latency_ms_p95:.1f} "
            f"| {m.cost_per_1k_usd:.4f} | {verdict} |"
        )
    return rows


def _per_label(events: Sequence[Event]) -> list[str]:
    measured = [
        (f"{e.model.candidate} {e.model.variant}", e.measurement)
        for e in _of(events, CandidateBenchmarked, VariantBenchmarked)
        if isinstance(e, CandidateBenchmarked | VariantBenchmarked)
    ]
    labels = sorted({k.split("/", 1)[1] for _, m in measured for k in m.extra if k.startswith("recall/")})
    if not labels:
        return []
    rows = ["| model | " + " | ".join(f"{label} P / R" for label in labels) + " |", "|---|" + "---|" * len(labels)]
    for name, m in measured:
        cells = [
            f"{m.extra.get(f'precision/{label}', 0):.2f} / {m.extra.get(f'recall/{label}', 0):.2f}" for label in labels
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def _canaries(events: Sequence[Event]) -> list[str]:
    rows = ["| when | manifest | candidate | result | score | p95 ms | reasons |", "|---|---|---|---|---|---|---|"]
    for e in _of(events, CanaryPassed, CanaryFailed):
        measured: Measurement | None = e.measurement if isinstance(e, CanaryPassed | CanaryFailed) else None
        result = (
            "passed" if isinstance(e, CanaryPassed) else f"FAILED ({e.kind})" if isinstance(e, CanaryFailed) else ""
        )
        reasons = "; ".join(e.reasons) if isinstance(e, CanaryFailed) else ""
        assert isinstance(e, CanaryPassed | CanaryFailed)
        rows.append(
            f"| {e.occurred_at:%H:%M:%S} | {e.manifest_id[:12]} | {e.model.candidate} {e.model.variant}"
            f"{' +adapter' if e.model.adapter_digest else ''} | {result} "
            f"| {score(measured) if measured else '—'} "
            f"| {f'{measured.latency_ms_p95:.1f}' if measured else '—'} | {reasons} |"
        )
    return rows


def _cell(text: str, limit: int = 80) -> str:
    """A sample's text as one Markdown table cell: one line, no column breaks, cut."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _samples(events: Sequence[Event], read_bytes: Callable[[str], bytes] | None) -> list[str]:
    """Each evaluation's worst rows (the live canaries only the latest few), as the HTML page shows them."""
    found, _ = evaluations(events)
    picked = shown(found)
    if not picked:
        return []
    out = ["## Samples", ""]
    if read_bytes is None:
        return [*out, f"{len(found)} evaluations keep their rows; `weightflow samples RUN` shows them.", ""]
    for evaluation in picked:
        out += [f"### {evaluation.title}", ""]
        problem = read_rows(evaluation, read_bytes)
        if problem is not None:
            out += [problem, ""]
            continue
        wrong, worst = evaluation.wrong(), evaluation.worst()
        out.append(f"{len(wrong)} of {len(evaluation.rows)} rows wrong (sample log `{evaluation.digest[:12]}`)"
                   + (f"; the {len(worst)} lowest-scored:" if worst else "."))
        if worst:
            out += ["", "| row | score | input | answered | expected |", "|---|---|---|---|---|"]
            out += [f"| {_cell(r.id, 24)} | {r.score:.3g} | {_cell(r.input)} | {_cell(r.prediction, 40)} "
                    f"| {_cell(r.target, 40)} |" for r in worst]
        out.append("")
    if len(found) > len(picked):
        out += [f"{len(found) - len(picked)} earlier canaries left out: `weightflow samples RUN` has them.", ""]
    return out


def render(run_id: UUID, events: Sequence[Event], outcome: str,
           read_bytes: Callable[[str], bytes] | None = None) -> str:
    """The report; with `read_bytes` (the artifact store's), each evaluation's worst rows as well."""
    out = [f"# Run {run_id}", "", f"Outcome: **{outcome}**.", ""]
    accepted = _of(events, RequirementsAccepted)
    if accepted and isinstance(accepted[0], RequirementsAccepted):
        c = accepted[0].context
        r = c.requirements
        out += [
            "## Requirements",
            "",
            f"`{r.name}` v{c.version} for deployment `{r.deployment.name}`: task {r.task.type}, "
            f"{r.quality.metric} ≥ {r.quality.threshold:.3f} on the eval set, p95 ≤ {r.latency.p95_ms:g} ms, "
            f"≤ ${r.cost.per_1k_tasks_usd:g} per 1k tasks on `{r.deployment.hardware.profile}` "
            f"({r.deployment.hardware.memory_mb:g} MB).",
            "",
        ]
    out += ["## Candidates, smallest size class first", "", *_candidates(events), ""]
    per_label = _per_label(events)
    if per_label:
        out += ["### Per label (precision / recall)", "", *per_label, ""]
    for e in _of(events, SelectionDecided, NoCandidatePassed):
        decisions = e.decisions if isinstance(e, SelectionDecided | NoCandidatePassed) else []
        out += ["## Selection" if isinstance(e, SelectionDecided) else "## No candidate passed", ""]
        out += [f"1. **{d.action}**: {d.reason}" for d in decisions]
        if isinstance(e, NoCandidatePassed):
            out.append(f"1. **{e.recommendation.action}**: {e.recommendation.reason}")
        if isinstance(e, SelectionDecided) and e.comparisons:
            out += ["", "Paired on the same eval rows:", "", *[f"- {c.describe()}" for c in e.comparisons]]
        out.append("")
    budgets = [e.budget for e in _of(events, MemoryBudgetComputed) if isinstance(e, MemoryBudgetComputed)]
    if budgets:
        out += [
            "## Memory budget",
            "",
            "| variant | weights MB | × overhead | activations MB | total MB | budget MB | fits |",
            "|---|---|---|---|---|---|---|",
        ]
        out += [
            f"| {b.variant} | {b.weight_bytes / MB:.1f} | {1 + b.overhead_fraction:.2f} | "
            f"{b.activation_bytes / MB:.1f} | {b.total_bytes / MB:.1f} | {b.budget_bytes / MB:.0f} | "
            f"{'yes' if b.fits else 'no'} |"
            for b in budgets
        ]
        out.append("")
    for e in _of(events, FitCompleted, FitFailed):
        steps = e.steps if isinstance(e, FitCompleted | FitFailed) else []
        out += ["## Fitting", "", *[f"- {s}" for s in steps]]
        if isinstance(e, FitFailed):
            out.append(f"- **failed**: {e.reason}")
        out.append("")
    for e in _of(events, AdapterTrained, TuningGated):
        if isinstance(e, AdapterTrained):
            out += [
                "## Tuning",
                "",
                f"LoRA adapter `{e.adapter.tree_digest[:12]}`: {e.steps} steps in "
                f"{e.seconds:.1f} s, loss {e.loss_first:.3f} → {e.loss_last:.3f}.",
            ]
        elif isinstance(e, TuningGated):
            verdict = "passed" if e.passed else "refused: " + "; ".join(e.verdict.messages())
            out += [
                f"Gate {verdict}: task {e.task_score_before:.3f} → {e.task_score:.3f}, general "
                f"{e.general_score_before:.3f} → {e.general_score:.3f}.",
                *([f"Paired on the eval rows: {e.comparison.describe()}."] if e.comparison else []),
                *([f"Paired on the general set: {e.general_comparison.describe()}."] if e.general_comparison else []),
                "",
            ]
    for e in _of(events, ModelRegistered, DeploymentPromoted, RolledBack):
        if isinstance(e, ModelRegistered):
            out += [
                "## Registry",
                "",
                f"- registered manifest `{e.manifest_id}` (canary baseline "
                f"{score(e.canary_baseline)}); `weightflow runbook {e.deployment}`",
            ]
        elif isinstance(e, DeploymentPromoted):
            out.append(f"- promoted `{e.manifest_id[:12]}` on {e.deployment}")
        elif isinstance(e, RolledBack):
            out.append(
                f"- rolled back {'automatically' if e.automatic else 'on request'} to "
                f"`{e.to_manifest_id[:12]}`: {e.reason}"
            )
    canaries = _canaries(events)
    if len(canaries) > 2:
        out += ["", "## Canaries", "", *canaries]
    drifts = [e for e in _of(events, DriftDetected) if isinstance(e, DriftDetected)]
    out += [f"- {d.kind} drift: {d.baseline:.4g} → {d.observed:.4g} (limit {d.limit:.4g})" for d in drifts]
    loop = _of(events, WorkflowRerouted, WorkflowHalted)
    if loop:
        out += ["", "## Loop-back", ""]
        for e in loop:
            if isinstance(e, WorkflowRerouted):
                out.append(f"- rerouted ({e.from_stage} → {e.to_stage}), attempt {e.attempt}: {e.reason}")
            elif isinstance(e, WorkflowHalted):
                out.append(f"- **halted**: {e.reason}")
                out += [f"  - advice: {a}" for a in e.advice]
    out += ["", *_samples(events, read_bytes)]
    return "\n".join(out).rstrip() + "\n"
