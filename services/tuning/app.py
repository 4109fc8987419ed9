"""Tuning service: LoRA on the frozen fitted base, only when a measured quality gap remains."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from contracts.base import Event
from contracts.fitting import FitCompleted
from contracts.tuning import AdapterArtifact, AdapterTrained, TuningGated, TuningSkipped
from services.tuning import domain
from services.tuning.store import TuningRun
from shared.bus import HandlerContext, Service
from shared.measure import measure
from shared.modeling.device import pick_device
from shared.modeling.evaluation import evaluate_similarity
from shared.modeling.lora import LoraSettings, attach_adapter, train_lora
from shared.models import load_model
from shared.splits import examples, pairs

service = Service("tuning", publishes=(AdapterTrained, TuningGated, TuningSkipped))


@service.handles(FitCompleted)
def on_fit_completed(event: FitCompleted, ctx: HandlerContext) -> Sequence[Event]:
    """Train a LoRA adapter when the fitted model misses quality by a tunable margin, then gate it."""
    context = event.context
    req = context.requirements
    data = context.data
    decision = domain.should_tune(event.quality_gap, req, data.train is not None and data.general is not None)
    if not decision.tune:
        return [TuningSkipped.follow(event, reason=decision.reason, terminal=decision.terminal)]
    assert data.train is not None and data.general is not None
    settings = LoraSettings()
    model_dir = ctx.store.materialize_tree(event.model.tree_digest)
    with tempfile.TemporaryDirectory(prefix="wf-lora-") as tmp:
        report = train_lora(model_dir, examples(ctx.store, data.train), req.task.labels, Path(tmp) / "adapter",
                            settings, device=pick_device(ctx.settings.device))
        adapter_tree = ctx.store.put_tree(Path(tmp) / "adapter")
    adapter = AdapterArtifact(tree_digest=adapter_tree, base_tree_digest=event.model.tree_digest,
                              train_data_digest=data.train, settings=settings.model_dump())
    general = pairs(ctx.store, data.general)
    base = load_model(ctx.store, event.model.tree_digest, ctx.settings.device)
    general_before = evaluate_similarity(base, general).spearman
    tuned = attach_adapter(base, ctx.store.materialize_tree(adapter_tree))
    m = measure(tuned, examples(ctx.store, data.eval), req.task.labels, req.deployment.hardware)
    general_after = evaluate_similarity(tuned, general).spearman
    reasons = domain.gate(req, task_score=m.score, general_before=general_before, general_after=general_after)
    ctx.session.add(TuningRun(run_id=str(event.run_id), base_tree_digest=event.model.tree_digest,
                              adapter_tree_digest=adapter_tree, train_data_digest=data.train,
                              task_score_before=event.measurement.score, task_score=m.score,
                              general_before=general_before, general_after=general_after, passed=not reasons))
    return [
        AdapterTrained.follow(event, adapter=adapter, steps=report.steps, seconds=report.seconds,
                              loss_first=report.loss_first, loss_last=report.loss_last),
        TuningGated.follow(event, context=context, model=event.model, adapter=adapter, measurement=m,
                           budget=event.budget,
                           task_score_before=event.measurement.score, task_score=m.score,
                           general_score_before=general_before, general_score=general_after,
                           passed=not reasons, reasons=reasons),
    ]
