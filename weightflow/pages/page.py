"""One page for a run or a deployment: facts from the events, figures from `figures`, laid out by a Jinja2
template (autoescaped: every string on the page came from a requirements file or a model, not from us).

A section with nothing to show says so in one line instead of drawing an empty plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any
from uuid import UUID

import plotly.graph_objects as go
from jinja2 import Environment, PackageLoader, select_autoescape
from plotly.offline import get_plotlyjs

from weightflow.contracts.base import Event
from weightflow.contracts.fitting import FitCompleted, FitFailed, MemoryBudgetComputed
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, DriftDetected
from weightflow.contracts.registry import ModelRegistered, RolledBack
from weightflow.contracts.requirements import Requirements, RequirementsAccepted, RunContext
from weightflow.contracts.tuning import AdapterTrained, TuningGated
from weightflow.contracts.workflow import WorkflowHalted, WorkflowRerouted, WorkflowResumed
from weightflow.evaluations import evaluations, read_rows, shown
from weightflow.pages import figures
from weightflow.pages.trail import trail
from weightflow.render import verdict_text

MB = 1024 * 1024


@dataclass(frozen=True)
class PageOptions:
    """How a page is delivered: plotly.js inline (a file that opens offline) or from a URL (the live UI,
    which serves it once); `read_text` reads a stored text by digest (the runbook), None where no store is
    readable; `refresh_url`, when set, is polled and the page reloads when it changes."""

    plotly_src: str | None = None  # None: inline
    read_text: Callable[[str], str] | None = None
    refresh_url: str | None = None
    home_url: str | None = None


@cache
def _env() -> Environment:
    return Environment(
        loader=PackageLoader("weightflow.pages"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def plotly_js() -> str:
    return str(get_plotlyjs())


def _div(fig: go.Figure | None, div_id: str) -> str | None:
    if fig is None:
        return None
    html: str = fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False, "responsive": True}
    )
    return html


def score_text(m: Measurement) -> str:
    interval = f" [{m.interval.low:.3f}, {m.interval.high:.3f}]" if m.interval else ""
    return f"{m.score:.3f}{interval}"


def other_metrics(m: Measurement) -> str:
    """The metrics a task reported beside the chosen one (never a NaN for a metric another task has)."""
    shown = {k: v for k, v in m.extra.items() if "/" not in k and k != m.metric}
    return ", ".join(f"{k} {v:.3f}" if abs(v) < 100 else f"{k} {v:.0f}" for k, v in sorted(shown.items())) or "—"


def requirements_rows(ctx: RunContext) -> list[tuple[str, str]]:
    r: Requirements = ctx.requirements
    hw = r.deployment.hardware
    task = r.task.type + (f" ({', '.join(r.task.labels)})" if r.task.labels else "")
    names = [c.key for c in ctx.candidates] or [c.key for c in r.candidates or []] or ["every built-in"]
    return [
        ("requirements", f"'{r.name}' version {ctx.version} (sha256 {ctx.requirements_digest[:12]})"),
        ("deployment", f"{r.deployment.name} ({r.deployment.mode})"),
        ("task", task),
        (
            "quality",
            f"{r.quality.metric} ≥ {r.quality.threshold:g} on the eval set; tuning may close a gap up to "
            f"{r.quality.tunable_gap:g}, losing at most {r.quality.max_general_drop:g} in general",
        ),
        ("latency", f"p95 ≤ {r.latency.p95_ms:g} ms"),
        ("cost", f"≤ ${r.cost.per_1k_tasks_usd:g} per 1k tasks"),
        (
            "hardware",
            f"{hw.profile}: {hw.device}, {hw.memory_mb:g} MB, ${hw.cost_per_hour_usd:g}/hour, runtime "
            + ("calibrated for the device" if hw.runtime_mb is None else f"{hw.runtime_mb:g} MB"),
        ),
        ("candidates", ", ".join(names)),
        (
            "quantization",
            ", ".join(r.quantization.allowed) + (f" (forced: {r.quantization.force})" if r.quantization.force else ""),
        ),
        (
            "monitoring",
            f"canary every {r.monitoring.canary_interval_s:g} s at {r.monitoring.confidence:g} "
            f"confidence; fail on a drop of {r.monitoring.quality_drop:g}; at most "
            f"{r.monitoring.max_reroutes} reroutes",
        ),
    ]


def _outcome(events: Sequence[Event], outcome: str) -> tuple[str, str]:
    """The one sentence at the top of the page, and its tone."""
    halts = [e for e in events if isinstance(e, WorkflowHalted)]
    resumed_after = halts and any(
        isinstance(e, WorkflowResumed) and e.occurred_at > halts[-1].occurred_at for e in events
    )
    if halts and not resumed_after:
        return f"Halted: {halts[-1].reason}", "bad"
    registered = [e for e in events if isinstance(e, ModelRegistered)]
    if outcome == "succeeded" and registered:
        last = registered[-1]
        return f"Deployed: {last.deployment} runs manifest {last.manifest_id[:12]} and passed its canary", "good"
    tone = {"succeeded": "good", "failed": "bad", "timed out": "bad"}.get(outcome, "neutral")
    return outcome[:1].upper() + outcome[1:], tone


def _canary_rows(events: Sequence[Event]) -> list[dict[str, str]]:
    rows = []
    for e in events:
        if isinstance(e, CanaryPassed | CanaryFailed):
            m = e.measurement
            rows.append(
                {
                    "at": f"{e.occurred_at:%Y-%m-%d %H:%M:%S}",
                    "manifest": e.manifest_id[:12],
                    "model": f"{e.model.candidate} {e.model.variant}{' +adapter' if e.model.adapter_digest else ''}",
                    "result": "passed" if isinstance(e, CanaryPassed) else f"failed ({e.kind})",
                    "tone": "good" if isinstance(e, CanaryPassed) else "bad",
                    "score": f"{m.metric} {score_text(m)}" if m else "—",
                    "p95": f"{m.latency_ms_p95:.1f}" if m else "—",
                    "reasons": "; ".join(e.reasons) if isinstance(e, CanaryFailed) else "",
                }
            )
        elif isinstance(e, DriftDetected | RolledBack | WorkflowRerouted):
            from weightflow.render import summary

            rows.append(
                {
                    "at": f"{e.occurred_at:%Y-%m-%d %H:%M:%S}",
                    "manifest": "",
                    "model": "",
                    "result": type(e).__name__,
                    "tone": "bad",
                    "score": "",
                    "p95": "",
                    "reasons": summary(e),
                }
            )
    return rows


def _registrations(events: Sequence[Event], read_text: Callable[[str], str] | None) -> list[dict[str, Any]]:
    out = []
    for e in events:
        if not isinstance(e, ModelRegistered):
            continue
        runbook: str | None = None
        why = "no artifact store is readable here"
        if read_text is not None:
            try:
                runbook = read_text(e.runbook_digest)
            except Exception as exc:  # a missing or unreadable runbook is a line on the page, never a crash
                why = f"the runbook {e.runbook_digest[:12]} is not readable here: {str(exc)[:200]}"
        out.append({"event": e, "files": sorted(e.checksums.items()), "runbook": runbook, "why": why})
    return out


def _samples(events: Sequence[Event], read_text: Callable[[str], str] | None) -> dict[str, Any]:
    """Each evaluation's worst-scored rows, read before rendering; the live canaries only the latest few (a
    deployment watched for weeks has thousands), the rest named by `weightflow samples`."""
    found, without = evaluations(events)
    picked = shown(found)
    tables = []
    if read_text is not None:
        for evaluation in picked:
            problem = read_rows(evaluation, lambda digest: read_text(digest).encode())
            tables.append({"title": evaluation.title, "digest": evaluation.digest, "problem": problem,
                           "worst": evaluation.worst(), "wrong": len(evaluation.wrong()), "n": len(evaluation.rows)})
    return {"tables": tables, "found": len(found), "left_out": len(found) - len(picked), "without": without,
            "readable": read_text is not None}


def _context(title: str, subtitle: str, events: Sequence[Event], outcome: str, options: PageOptions) -> dict[str, Any]:
    accepted = [e for e in events if isinstance(e, RequirementsAccepted)]
    ctx = accepted[-1].context if accepted else None
    req = ctx.requirements if ctx else None
    summary, tone = _outcome(events, outcome)
    halts = [e for e in events if isinstance(e, WorkflowHalted)]
    budgets = [e for e in events if isinstance(e, MemoryBudgetComputed)]
    trained = [e for e in events if isinstance(e, AdapterTrained)]
    gated = [e for e in events if isinstance(e, TuningGated)]
    metric = req.quality.metric if req else "score"
    tuning = [{"trained": t, "loss": _div(figures.lora(t), f"lora-loss-{i}")} for i, t in enumerate(trained)]
    gates = [
        {"gated": g, "plot": _div(figures.gate(g, metric, req.quality.max_general_drop if req else None), f"gate-{i}")}
        for i, g in enumerate(gated)
    ]
    fits = [e for e in events if isinstance(e, FitCompleted | FitFailed)]
    return {
        "title": title,
        "subtitle": subtitle,
        "summary": summary,
        "tone": tone,
        "options": options,
        "plotly_inline": plotly_js() if options.plotly_src is None else None,
        "halt": halts[-1] if halts else None,
        "requirements": requirements_rows(ctx) if ctx else None,
        "candidates_plot": _div(figures.candidates(events, req), "candidates-plot"),
        "candidates": [
            {"e": e, "score": score_text(e.measurement), "other": other_metrics(e.measurement),
             "verdict": verdict_text(e.verdict)}
            for e in figures.benchmarked(events)
        ],
        "trail": trail(events),
        "memory_plot": _div(figures.memory(budgets, req.deployment.hardware.memory_mb if req else None), "memory-plot"),
        "measured": any(figures.measured_peak_mb(e) is not None for e in budgets),
        "fits": fits,
        "quantization_plot": _div(figures.quantization(events), "quantization-plot"),
        "tuning": tuning,
        "gates": gates,
        "registrations": _registrations(events, options.read_text),
        "canary_plot": _div(figures.canaries(events, req), "canary-plot"),
        "canaries": _canary_rows(events),
        "samples": _samples(events, options.read_text),
    }


def render_run_page(run_id: UUID, events: Sequence[Event], outcome: str, options: PageOptions | None = None) -> str:
    """The page of one run (its events as `pages.run_scope` picks them)."""
    deployment = next(
        (e.context.requirements.deployment.name for e in events if isinstance(e, RequirementsAccepted)), None
    )
    subtitle = f"deployment {deployment}" if deployment else "not accepted"
    return (
        _env()
        .get_template("page.html.j2")
        .render(_context(f"Run {run_id}", subtitle, events, outcome, options or PageOptions()))
    )


def render_deployment_page(name: str, events: Sequence[Event], options: PageOptions | None = None) -> str:
    """A deployment's whole history across runs (its events as `pages.deployment_scope` picks them)."""
    runs = len({e.run_id for e in events if isinstance(e, RequirementsAccepted)})
    canaries = [e for e in events if isinstance(e, CanaryPassed | CanaryFailed)]
    outcome = (
        "succeeded"
        if canaries and isinstance(canaries[-1], CanaryPassed)
        else ("failed" if canaries else "in progress")
    )
    return (
        _env()
        .get_template("page.html.j2")
        .render(
            _context(
                f"Deployment {name}",
                f"{runs} run(s) and every canary, rollback and halt",
                events,
                outcome,
                options or PageOptions(),
            )
        )
    )
