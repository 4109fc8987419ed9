"""Fitting service: fits the selected model to the target's memory, quantizing only when needed.

Every change is re-benchmarked (a `BenchmarkRequested` for the new variant) before the fit completes,
because quantization can cost quality or speed that the requirements do not allow.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from uuid import uuid5

from contracts.base import Event, utcnow
from contracts.benchmark import BenchmarkRequested, CandidateBenchmarked, ModelArtifact, SelectionDecided
from contracts.fitting import FitCompleted, FitFailed, MemoryBudget, MemoryBudgetComputed
from contracts.requirements import RunContext
from services.fitting import domain
from services.fitting.store import FitAttempt
from shared.bus import HandlerContext, Service
from shared.measure import judge
from shared.modeling.quantization import quantize_int8, save_quantized
from shared.models import load_model

service = Service("fitting", publishes=(MemoryBudgetComputed, FitCompleted, FitFailed, BenchmarkRequested))


def _architecture(ctx: HandlerContext, tree_digest: str) -> domain.Architecture:
    files = ctx.store.tree_files(tree_digest)
    return domain.Architecture.from_config(ctx.store.read_json(files["config.json"]))


@service.handles(SelectionDecided)
def on_selected(event: SelectionDecided, ctx: HandlerContext) -> Sequence[Event]:
    """Budget the selected fp32 model; quantize when it does not fit (or when forced) and re-benchmark."""
    req = event.context.requirements
    hw = req.deployment.hardware
    budget_bytes = int(hw.memory_mb * domain.MB)
    arch = _architecture(ctx, event.model.tree_digest)
    fp32 = domain.memory_budget("fp32", event.model.params, arch, budget_bytes)
    out: list[Event] = [MemoryBudgetComputed.follow(event, budget=fp32)]
    steps = [domain.describe(fp32)]
    if fp32.fits and not req.quantization.force:
        steps.append("no change needed: fp32 fits")
        out.append(FitCompleted.follow(event, context=event.context, model=event.model,
                                       measurement=event.measurement, budget=fp32,
                                       quality_gap=event.quality_gap, steps=steps))
        return out
    scheme = req.quantization.force or domain.next_scheme(list(req.quantization.allowed), [])
    if scheme is None:
        out.append(FitFailed.follow(event, steps=steps, reason=(
            f"fp32 needs {fp32.total_bytes / domain.MB:.0f} MB > {hw.memory_mb:g} MB and no quantization is "
            "allowed: add int8 to quantization.allowed or choose hardware with more memory")))
        return out
    encoder = load_model(ctx.store, event.model.tree_digest, ctx.settings.device)
    quantize_int8(encoder.model)
    with tempfile.TemporaryDirectory(prefix="wf-fit-") as tmp:
        tree = ctx.store.put_tree(save_quantized(encoder, Path(tmp) / "int8"))
    variant = event.model.model_copy(update={"variant": scheme, "tree_digest": tree})
    budget = domain.memory_budget(scheme, event.model.params, arch, budget_bytes,
                                  weight_bytes=encoder.weight_bytes())
    out.append(MemoryBudgetComputed.follow(event, budget=budget))
    steps.append(f"quantized to {scheme}: {domain.describe(budget)}")
    if not budget.fits:
        out.append(FitFailed.follow(event, steps=steps, reason=(
            f"even {scheme} needs {budget.total_bytes / domain.MB:.0f} MB > {hw.memory_mb:g} MB; this release "
            "does not shard or offload: choose hardware with more memory or a smaller candidate")))
        return out
    request_id = str(uuid5(event.event_id, scheme))
    ctx.session.add(FitAttempt(request_id=request_id, run_id=str(event.run_id),
                               context_json=event.context.model_dump_json(), model_json=variant.model_dump_json(),
                               budget_json=budget.model_dump_json(), steps_json=json.dumps(steps)))
    out.append(BenchmarkRequested.follow(event, context=event.context, model=variant, request_id=request_id))
    return out


@service.handles(CandidateBenchmarked)
def on_benchmarked(event: CandidateBenchmarked, ctx: HandlerContext) -> Sequence[Event]:
    """The re-benchmark of a variant this service asked for: complete the fit or fail it with numbers."""
    if event.request_id is None:
        return []
    attempt = ctx.session.get(FitAttempt, event.request_id)
    if attempt is None or attempt.status != "benchmarking":
        return []
    context = RunContext.model_validate_json(attempt.context_json)
    model = ModelArtifact.model_validate_json(attempt.model_json)
    budget = MemoryBudget.model_validate_json(attempt.budget_json)
    steps: list[str] = json.loads(attempt.steps_json)
    _, failures, gap = judge(event.measurement, context.requirements)
    m = event.measurement
    steps.append(f"re-benchmarked {model.variant}: score {m.score:.3f}, p95 {m.latency_ms_p95:.1f} ms, "
                 f"${m.cost_per_1k_usd:.4f}/1k")
    attempt.finished_at = utcnow()
    blocking = [f for f in failures if not f.startswith("quality")]
    ctx.session.add(attempt)
    if blocking:
        attempt.status = "failed"
        return [FitFailed.follow(event, steps=steps,
                                 reason=f"{model.variant} variant misses: {'; '.join(blocking)}")]
    attempt.status = "completed"
    return [FitCompleted.follow(event, context=context, model=model, measurement=m, budget=budget,
                                quality_gap=gap, steps=steps)]
