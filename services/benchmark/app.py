"""Benchmark service: measures candidates on the team's eval set and decides which one goes on."""

from __future__ import annotations

import json
from collections.abc import Sequence

from contracts.base import Event
from contracts.benchmark import (
    BenchmarkRequested,
    CandidateBenchmarked,
    Decision,
    ModelArtifact,
    NoCandidatePassed,
    SelectionDecided,
)
from contracts.requirements import RequirementsAccepted, RunContext
from services.benchmark import domain
from services.benchmark.store import BenchmarkRecord
from shared.bus import HandlerContext, PermanentError, Service
from shared.measure import judge, measure
from shared.modeling.catalog import UnknownModelError, known_candidates
from shared.models import load_model, store_candidate
from shared.splits import examples

service = Service("benchmark", publishes=(CandidateBenchmarked, SelectionDecided, NoCandidatePassed))


def _benchmark(cause: Event, context: RunContext, model: ModelArtifact, ctx: HandlerContext,
               request_id: str | None = None) -> CandidateBenchmarked:
    req = context.requirements
    encoder = load_model(ctx.store, model.tree_digest, ctx.settings.device)
    m = measure(encoder, examples(ctx.store, context.data.eval), req.task.labels, req.deployment.hardware)
    passed, failures, gap = judge(m, req)
    ctx.session.add(BenchmarkRecord(
        run_id=str(cause.run_id), candidate=model.candidate, variant=model.variant,
        tree_digest=model.tree_digest, request_id=request_id, passed=passed,
        measurement_json=m.model_dump_json(), failures_json=json.dumps(failures)))
    return CandidateBenchmarked.follow(cause, model=model, measurement=m, passed=passed, failures=failures,
                                       quality_gap=gap, request_id=request_id)


@service.handles(RequirementsAccepted)
def on_accepted(event: RequirementsAccepted, ctx: HandlerContext) -> Sequence[Event]:
    """Benchmark size classes smallest first; stop at the first class that yields a selection."""
    req = event.context.requirements
    catalog = known_candidates()
    names = req.candidates or sorted(catalog)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise PermanentError(str(UnknownModelError(f"unknown candidates {unknown}; known: {sorted(catalog)}")))
    out: list[Event] = []
    decisions: list[Decision] = []
    tried: list[domain.Result] = []
    for size_class in domain.class_order(catalog[n].size_class for n in names):
        results = []
        for name in (n for n in names if catalog[n].size_class == size_class):
            benchmarked = _benchmark(event, event.context, store_candidate(ctx.store, name), ctx)
            out.append(benchmarked)
            results.append(domain.Result(name, size_class, benchmarked.model.params, benchmarked.measurement))
        tried += results
        chosen, decision = domain.decide_class(results, req, size_class)
        decisions.append(decision)
        if chosen is not None:
            picked = next(e for e in out
                          if isinstance(e, CandidateBenchmarked) and e.model.candidate == chosen.candidate)
            out.append(SelectionDecided.follow(event, context=event.context, model=picked.model,
                                               measurement=picked.measurement, quality_gap=picked.quality_gap,
                                               decisions=decisions))
            return out
    out.append(NoCandidatePassed.follow(event, decisions=decisions, recommendation=domain.recommend(tried, req)))
    return out


@service.handles(BenchmarkRequested)
def on_requested(event: BenchmarkRequested, ctx: HandlerContext) -> Sequence[Event]:
    """Re-benchmark a variant (e.g. a quantized model from fitting) on the same eval set."""
    return [_benchmark(event, event.context, event.model, ctx, request_id=event.request_id)]
