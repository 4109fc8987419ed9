"""Tuning service: LoRA on the frozen fitted base, when fitting routed the model here (a quality gap)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlmodel import Session

from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import UNQUANTIZED
from weightflow.contracts.fitting import FitNeedsTuning
from weightflow.contracts.tuning import (
    AdapterArtifact,
    AdapterRefused,
    AdapterTrained,
    LossPoint,
    TuningGated,
    TuningSkipped,
)
from weightflow.services.tuning import domain
from weightflow.services.tuning.tables import TuningRun
from weightflow.shared import sample_logs
from weightflow.shared.bus import HandlerContext, HandlerResult, Service
from weightflow.shared.comparisons import compare
from weightflow.shared.modeling import placement
from weightflow.shared.modeling.registry import quantizers, tuners
from weightflow.shared.modeling.stored import load_tree, rows, task_of
from weightflow.shared.stats import paired_statistic

service = Service("tuning")
METHOD = "lora"


@service.handles(FitNeedsTuning)
def on_fit_needs_tuning(event: FitNeedsTuning, ctx: HandlerContext) -> HandlerResult:
    """Train a LoRA adapter on the fitted base, then gate it on the task set and the general set: a gate it passes
    is a TuningGated (to the registry), one it does not an AdapterRefused (to the loop-back)."""
    key = f"tune:{event.run_id}"  # one fit decision per run, so one training: a replay trains nothing
    if ctx.done(key):
        return []
    context = event.context
    req = context.requirements
    data = context.data
    if data.train is None or data.general is None:
        skipped = TuningSkipped.follow(event, reason="data.train and data.general are needed to tune")
        return ctx.once(key, event, [skipped])
    task = task_of(req.task)
    tuner = tuners.get(METHOD)
    base = load_tree(ctx.store, event.model.tree_digest, task, ctx.settings.device)
    # A scheme an adapter cannot train on (4-bit compressed-tensors) trains on the unquantized base; the
    # adapter is then served, and gated, on the quantized model it will run on.
    # An offloaded variant trains on its base too: tuning runs where the whole model fits, not on the target.
    scheme = placement.scheme_of(event.model.variant)
    on_base = event.model.variant != UNQUANTIZED and (scheme != event.model.variant or
                                                      quantizers.get(scheme).trains_on_base)
    train_tree = event.model.base_tree_digest if on_base else event.model.tree_digest
    trainee = load_tree(ctx.store, train_tree, task, ctx.settings.device) if on_base else base
    general = rows(ctx.store, data.general, task, "general")
    general_before, outputs_before = task.runtime().general_pass(base, req.task, general)
    with tempfile.TemporaryDirectory(prefix="wf-lora-") as tmp:
        report = tuner.train(task, trainee, req.task, rows(ctx.store, data.train, task, "train"),
                             Path(tmp) / "adapter")
        adapter_tree = ctx.store.put_tree(Path(tmp) / "adapter")
    del trainee
    tuned = tuner.attach(base, ctx.store.materialize_tree(adapter_tree))
    m = sample_logs.keep(ctx.store, task.runtime().evaluate(tuned, req.task, rows(ctx.store, data.eval, task, "eval"),
                                                  req.quality.metric, req.deployment.hardware,
                                                  req.quality.confidence))
    comparison = compare(ctx.store, event.measurement, m, baseline_name=event.model.label,
                         candidate_name=f"{event.model.label} + {METHOD}", confidence=req.quality.confidence)
    general_after, outputs_after = task.runtime().general_pass(tuned, req.task, general)
    general_comparison = None
    if outputs_before is not None and outputs_after is not None:
        general_comparison = paired_statistic(
            outputs_before.values, outputs_after.values, outputs_before.statistic, baseline_name=event.model.label,
            candidate_name=f"{event.model.label} + {METHOD}", confidence=req.quality.confidence)
    verdict = domain.gate(req, m, general_before=general_before, general_after=general_after,
                          general=general_comparison)
    adapter = AdapterArtifact(tree_digest=adapter_tree, base_tree_digest=train_tree,
                              train_data_digest=data.train, method=METHOD, settings=report.settings)
    gate = {"context": context, "model": event.model, "adapter": adapter, "measurement": m, "budget": event.budget,
            "task_score_before": event.measurement.score, "task_score": m.score,
            "general_score_before": general_before, "general_score": general_after, "verdict": verdict,
            "comparison": comparison, "general_comparison": general_comparison}
    out: list[Event] = [
        AdapterTrained.follow(event, adapter=adapter, steps=report.steps, seconds=report.seconds,
                              loss_first=report.loss_first, loss_last=report.loss_last,
                              loss_curve=[LossPoint(step=step, loss=loss) for step, loss in report.loss_curve]),
        # the route is the event's type: the registry consumes TuningGated, the loop-back AdapterRefused
        TuningGated.follow(event, **gate) if verdict.passed else AdapterRefused.follow(event, **gate),
    ]

    def commit(session: Session) -> Sequence[Event]:
        session.add(TuningRun(run_id=str(event.run_id), base_tree_digest=event.model.tree_digest,
                              adapter_tree_digest=adapter_tree, train_data_digest=data.train or "",
                              task_score_before=event.measurement.score, task_score=m.score,
                              general_before=general_before, general_after=general_after, passed=verdict.passed))
        return out

    return ctx.once(key, event, commit)
