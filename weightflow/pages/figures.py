"""The plots of a page, one function each, from the events alone (plotly figures; None when there is nothing
to plot, and the page says so in one line instead of drawing an empty chart).

Every point a figure draws is one measurement an event carries: the browser tests count them.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import CandidateBenchmarked, VariantBenchmarked
from weightflow.contracts.fitting import MemoryBudgetComputed
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, DriftDetected
from weightflow.contracts.registry import RolledBack
from weightflow.contracts.requirements import Requirements
from weightflow.contracts.tuning import AdapterTrained, TuningGated
from weightflow.contracts.workflow import WorkflowHalted, WorkflowRerouted

MB = 1024 * 1024
PASS, MISS, LINE, MUTED = "#1a7f37", "#cf222e", "#57606a", "#8c959f"
BEFORE, AFTER = MUTED, "#0969da"  # unquantized, quantized
LAYOUT = {
    "template": "plotly_white",
    "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
    "font": {"family": "system-ui, sans-serif", "size": 13},
    "legend": {"orientation": "h", "y": -0.18},
}

Benchmarked = CandidateBenchmarked | VariantBenchmarked
SPREAD = ("middle right", "top right", "bottom right")  # labels right of the point, never over the axis


def _errors(ms: Sequence[Measurement]) -> dict[str, object]:
    """Error bars from each score's confidence interval (none where a measurement has no interval)."""
    return {
        "type": "data",
        "symmetric": False,
        "color": LINE,
        "thickness": 1.2,
        "array": [m.interval.high - m.score if m.interval else 0 for m in ms],
        "arrayminus": [m.score - m.interval.low if m.interval else 0 for m in ms],
    }


def _hover(e: Benchmarked) -> str:
    m = e.measurement
    interval = f" [{m.interval.low:.3f}, {m.interval.high:.3f}]" if m.interval else ""
    verdict = "passes every requirement" if e.verdict.passed else "<br>".join(e.verdict.messages())
    return (
        f"<b>{e.model.candidate}</b> {e.model.variant} ({e.model.size_class})<br>{m.metric} {m.score:.3f}"
        f"{interval} on {m.n} rows<br>p95 {m.latency_ms_p95:.1f} ms · ${m.cost_per_1k_usd:.4f}/1k<br>{verdict}"
    )


def benchmarked(events: Sequence[Event]) -> list[Benchmarked]:
    """Each model measured, once: a reroute announces the measurements it reuses again, with the same numbers."""
    seen: set[tuple[object, ...]] = set()
    out: list[Benchmarked] = []
    for e in events:
        if isinstance(e, CandidateBenchmarked | VariantBenchmarked):
            m = e.measurement
            key = (
                e.model.candidate,
                e.model.variant,
                e.model.tree_digest,
                m.score,
                m.latency_ms_p95,
                m.cost_per_1k_usd,
                m.n,
            )
            if key not in seen:
                seen.add(key)
                out.append(e)
    return out


def candidates(events: Sequence[Event], req: Requirements | None) -> go.Figure | None:
    """Score (with its interval) against p95 latency and against cost: the threshold and the ceilings as lines,
    each candidate and variant a point, green when it clears every requirement, a red cross when it misses."""
    measured = benchmarked(events)
    if not measured:
        return None
    metric = measured[0].measurement.metric
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.06,
        subplot_titles=("against p95 latency", "against cost per 1k tasks"),
    )
    for col, field in ((1, "latency_ms_p95"), (2, "cost_per_1k_usd")):
        for passed, name, color, symbol in ((True, "passes", PASS, "circle"), (False, "misses", MISS, "x")):
            group = [e for e in measured if e.verdict.passed == passed]
            if not group:
                continue
            ms = [e.measurement for e in group]
            fig.add_trace(
                go.Scatter(
                    x=[getattr(m, field) for m in ms],
                    y=[m.score for m in ms],
                    error_y=_errors(ms),
                    mode="markers+text",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    text=[f"{e.model.candidate} {e.model.variant}" for e in group],
                    textposition=[SPREAD[i % len(SPREAD)] for i in range(len(group))],  # points that coincide
                    hovertext=[_hover(e) for e in group],
                    hoverinfo="text",
                    marker={"color": color, "symbol": symbol, "size": 12, "line": {"width": 1, "color": "white"}},
                ),
                row=1,
                col=col,
            )
    if req is not None:
        fig.add_hline(
            y=req.quality.threshold,
            line={"color": LINE, "dash": "dash"},
            row=1,
            col="all",
            annotation_text=f"threshold {req.quality.threshold:g}",
            annotation_position="bottom right",
        )
        fig.add_vline(
            x=req.latency.p95_ms,
            line={"color": MISS, "dash": "dot"},
            row=1,
            col=1,
            annotation_text=f"p95 ceiling {req.latency.p95_ms:g} ms",
            annotation_position="top left",
        )
        fig.add_vline(
            x=req.cost.per_1k_tasks_usd,
            line={"color": MISS, "dash": "dot"},
            row=1,
            col=2,
            annotation_text=f"ceiling ${req.cost.per_1k_tasks_usd:g}",
            annotation_position="top left",
        )
    fig.update_xaxes(title_text="p95 latency (ms)", row=1, col=1, rangemode="tozero")
    fig.update_xaxes(title_text="$ per 1k tasks", row=1, col=2, rangemode="tozero")
    fig.update_yaxes(title_text=f"{metric} (95% interval)", row=1, col=1)
    fig.update_layout(height=430, **LAYOUT)
    return fig


def measured_peak_mb(e: MemoryBudgetComputed) -> float | None:
    """The variant's measured peak, where fitting measured one (not when the prediction ruled the variant out)."""
    return e.measured.peak_bytes / MB if e.measured is not None else None


def memory(computed: Sequence[MemoryBudgetComputed], hardware_mb: float | None) -> go.Figure | None:
    """Each scheme's predicted memory, stacked (weights, overhead, activations or KV cache, runtime), against
    the hardware's memory; the measured peak as a diamond where the event carries one."""
    if not computed:
        return None
    budgets = [e.budget for e in computed]
    names = [b.variant for b in budgets]
    if len(set(names)) < len(names):  # the same scheme budgeted twice (a reroute): keep the bars apart
        names = [f"{i + 1}. {n}" for i, n in enumerate(names)]
    parts = (
        ("weights", [b.weight_bytes for b in budgets], "#0969da"),
        ("overhead", [b.weight_bytes * b.overhead_fraction for b in budgets], "#54aeff"),
        ("activations / KV cache", [b.activation_bytes for b in budgets], "#bf8700"),
        ("runtime", [b.runtime_bytes for b in budgets], MUTED),
    )
    fig = go.Figure()
    for label, values, color in parts:
        fig.add_trace(
            go.Bar(
                x=names,
                y=[v / MB for v in values],
                name=label,
                marker_color=color,
                hovertemplate=f"{label}: %{{y:.1f}} MB<extra>%{{x}}</extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=names,
            y=[b.total_bytes / MB for b in budgets],
            mode="text",
            showlegend=False,
            hoverinfo="skip",
            text=[f"{b.total_bytes / MB:.0f} MB: {'fits' if b.fits else 'does not fit'}" for b in budgets],
            textposition="top center",
            textfont={"color": [PASS if b.fits else MISS for b in budgets]},
        )
    )
    peaks: list[tuple[str, float]] = []
    for name, e in zip(names, computed, strict=True):
        peak = measured_peak_mb(e)
        if peak is not None:
            peaks.append((name, peak))
    if peaks:
        fig.add_trace(
            go.Scatter(
                x=[n for n, _ in peaks],
                y=[p for _, p in peaks],
                mode="markers",
                name="measured peak",
                marker={"symbol": "diamond", "size": 14, "color": "#1f2328"},
                hovertemplate="measured peak %{y:.1f} MB<extra>%{x}</extra>",
            )
        )
    limit = hardware_mb if hardware_mb is not None else budgets[0].budget_bytes / MB
    fig.add_hline(
        y=limit,
        line={"color": MISS, "dash": "dash"},
        annotation_text=f"hardware {limit:g} MB",
        annotation_position="top left",
    )
    top = max(limit, *(b.total_bytes / MB for b in budgets), *(p for _, p in peaks))
    fig.update_layout(barmode="stack", height=380, yaxis={"title": "predicted MB", "range": [0, top * 1.2]}, **LAYOUT)
    return fig


def quantization(events: Sequence[Event]) -> go.Figure | None:
    """Before and after: each quantized variant beside the unquantized checkpoint it came from (score with its
    interval, and p95 latency)."""
    variants = [e for e in benchmarked(events) if isinstance(e, VariantBenchmarked)]
    if not variants:
        return None
    bases = {e.model.tree_digest: e for e in benchmarked(events) if isinstance(e, CandidateBenchmarked)}
    pairs: list[Benchmarked] = []
    for v in variants:
        base = bases.get(v.model.base_tree_digest)
        if base is not None and base not in pairs:
            pairs.append(base)
        pairs.append(v)
    labels = [f"{e.model.candidate} {e.model.variant}" for e in pairs]
    colors = [BEFORE if isinstance(e, CandidateBenchmarked) else AFTER for e in pairs]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{pairs[0].measurement.metric}", "p95 latency (ms)"))
    ms = [e.measurement for e in pairs]
    fig.add_trace(
        go.Bar(
            x=labels,
            y=[m.score for m in ms],
            error_y=_errors(ms),
            marker_color=colors,
            showlegend=False,
            hovertext=[_hover(e) for e in pairs],
            hoverinfo="text",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=labels,
            y=[m.latency_ms_p95 for m in ms],
            marker_color=colors,
            showlegend=False,
            hovertext=[_hover(e) for e in pairs],
            hoverinfo="text",
        ),
        row=1,
        col=2,
    )
    fig.update_layout(height=360, **LAYOUT)
    return fig


def lora(trained: AdapterTrained) -> go.Figure:
    """The adapter's training loss step by step (an event from a release before the curve was kept carries its
    first and last value only: two points, and the page says so)."""
    if trained.loss_curve:
        steps, losses = [p.step for p in trained.loss_curve], [p.loss for p in trained.loss_curve]
    else:
        steps, losses = [1, max(trained.steps, 1)], [trained.loss_first, trained.loss_last]
    fig = go.Figure(
        go.Scatter(
            x=steps,
            y=losses,
            mode="lines+markers",
            marker={"size": 10, "color": "#0969da"},
            name="training loss",
        )
    )
    fig.update_layout(height=300, xaxis={"title": "step"}, yaxis={"title": "loss", "rangemode": "tozero"}, **LAYOUT)
    return fig


def gate(gated: TuningGated, metric: str, max_general_drop: float | None) -> go.Figure:
    """The dual gate: the task score must clear the threshold and the general score may not fall by more than
    the allowed drop. Before and after, side by side."""
    x = [f"task ({metric})", "general capability"]
    fig = go.Figure(
        [
            go.Bar(
                x=x,
                y=[gated.task_score_before, gated.general_score_before],
                name="before (fitted base)",
                marker_color=MUTED,
                texttemplate="%{y:.3f}",
            ),
            go.Bar(
                x=x,
                y=[gated.task_score, gated.general_score],
                name="after (with the adapter)",
                marker_color=PASS if gated.passed else MISS,
                texttemplate="%{y:.3f}",
            ),
        ]
    )
    title = "gate passed" if gated.passed else "gate refused: " + "; ".join(gated.verdict.messages())
    if max_general_drop is not None:
        title += f" (general may fall by at most {max_general_drop:g})"
    fig.update_layout(barmode="group", height=320, title={"text": title, "font": {"size": 13}}, **LAYOUT)
    return fig


def canaries(events: Sequence[Event], req: Requirements | None) -> go.Figure | None:
    """Canary scores over time with their intervals, the threshold and the registration baseline; rollbacks,
    reroutes, drift and halts as marked moments."""
    measured = [e for e in events if isinstance(e, CanaryPassed | CanaryFailed) and e.measurement is not None]
    if not measured:
        return None
    fig = go.Figure()
    for passed, name, color, symbol in ((True, "passed", PASS, "circle"), (False, "failed", MISS, "x")):
        group = [e for e in measured if isinstance(e, CanaryPassed) == passed]
        if not group:
            continue
        ms = [e.measurement for e in group if e.measurement is not None]
        fig.add_trace(
            go.Scatter(
                x=[e.occurred_at for e in group],
                y=[m.score for m in ms],
                error_y=_errors(ms),
                mode="markers",
                name=f"canary {name}",
                marker={"color": color, "symbol": symbol, "size": 12},
                hovertext=[
                    f"{e.model.candidate} {e.model.variant}{' +adapter' if e.model.adapter_digest else ''}"
                    f"<br>manifest {e.manifest_id[:12]}<br>{m.metric} {m.score:.3f} on {m.n} rows"
                    + ("" if isinstance(e, CanaryPassed) else "<br>" + "<br>".join(e.reasons))
                    for e, m in zip(group, ms, strict=True)
                ],
                hoverinfo="text",
            )
        )
    if req is not None:
        fig.add_hline(
            y=req.quality.threshold,
            line={"color": LINE, "dash": "dash"},
            annotation_text=f"threshold {req.quality.threshold:g}",
            annotation_position="bottom left",
        )
    baseline = next((e.baseline for e in measured if e.baseline is not None), None)
    if baseline is not None:
        fig.add_hline(
            y=baseline.score,
            line={"color": "#0969da", "dash": "dot"},
            annotation_text=f"baseline {baseline.score:.3f}",
            annotation_position="top left",
        )
    for e in events:
        label = _moment(e)
        if label is None:
            continue
        fig.add_shape(
            type="line",
            x0=e.occurred_at,
            x1=e.occurred_at,
            yref="paper",
            y0=0,
            y1=1,
            line={"color": MUTED, "dash": "dot", "width": 1},
        )
        fig.add_annotation(
            x=e.occurred_at,
            yref="paper",
            y=1.0,
            text=label,
            showarrow=False,
            textangle=-90,
            xanchor="right",
            yanchor="top",
            font={"size": 11, "color": LINE},
        )
    first = measured[0].measurement
    metric = first.metric if first is not None else "score"
    fig.update_layout(height=380, xaxis={"title": "time (UTC)"}, yaxis={"title": f"canary {metric}"}, **LAYOUT)
    return fig


def _moment(e: Event) -> str | None:
    if isinstance(e, RolledBack):
        return "rolled back"
    if isinstance(e, WorkflowRerouted):
        return "rerouted"
    if isinstance(e, DriftDetected):
        return f"{e.kind} drift"
    if isinstance(e, WorkflowHalted):
        return "halted"
    return None
