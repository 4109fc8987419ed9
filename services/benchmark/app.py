"""Benchmark service: measures candidates on the team's eval set and decides which one goes on.

Every measurement is kept under a key of what was measured on what (checkpoint tree, eval data, task,
metric, hardware), so a reroute reuses what it already knows instead of measuring it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, select

from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import (
    UNQUANTIZED,
    BenchmarkRequested,
    CandidateBenchmarked,
    CandidateUnavailable,
    Decision,
    ModelArtifact,
    NoCandidatePassed,
    SelectionDecided,
    VariantBenchmarked,
)
from weightflow.contracts.measurement import Comparison, Measurement
from weightflow.contracts.requirements import Requirements, RequirementsAccepted, RunContext
from weightflow.contracts.verdict import judge, quality_gap
from weightflow.services.benchmark import domain
from weightflow.services.benchmark.tables import BenchmarkRecord
from weightflow.shared.bus import HandlerContext, HandlerResult, PermanentError, Service
from weightflow.shared.comparisons import compare
from weightflow.shared.modeling.registry import quantizers, sources
from weightflow.shared.modeling.remote import EndpointError
from weightflow.shared.modeling.stored import budget_for, is_remote, measure, rows, task_of

service = Service("benchmark")


def measurement_key(context: RunContext, tree_digest: str) -> str:
    req = context.requirements
    what = {"tree": tree_digest, "eval": context.data.eval, "task": req.task.model_dump(mode="json"),
            "metric": req.quality.metric, "hardware": req.deployment.hardware.model_dump(mode="json"),
            "confidence": req.quality.confidence}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Measured:
    model: ModelArtifact
    measurement: Measurement
    key: str


def _known(ctx: HandlerContext, keys: list[str]) -> dict[str, Measurement]:
    def read(session: Session) -> dict[str, Measurement]:
        found = session.exec(select(BenchmarkRecord).where(col(BenchmarkRecord.measurement_key).in_(keys))).all()
        return {r.measurement_key: Measurement.model_validate_json(r.measurement_json) for r in found}

    return ctx.read(read)


def _measure(ctx: HandlerContext, context: RunContext, models: list[ModelArtifact]
             ) -> tuple[list[Measured], list[tuple[ModelArtifact, EndpointError]]]:
    """Measure each model on the eval set (or reuse an earlier measurement of the very same thing); an
    API candidate whose endpoint gives no usable answer is returned apart, with its error."""
    req = context.requirements
    task = task_of(req.task)
    keys = [measurement_key(context, m.tree_digest) for m in models]
    known = _known(ctx, keys)
    eval_rows = rows(ctx.store, context.data.eval, task, "eval") if len(known) < len(set(keys)) else []
    out: list[Measured] = []
    unavailable: list[tuple[ModelArtifact, EndpointError]] = []
    for model, key in zip(models, keys, strict=True):
        if key not in known:
            try:
                known[key] = measure(ctx.store, model.source, model.tree_digest, req, eval_rows,
                                     confidence=req.quality.confidence,
                                     device=ctx.settings.device)
            except EndpointError as exc:
                unavailable.append((model, exc))
                continue
        out.append(Measured(model, known[key], key))
    return out, unavailable


def _record(session: Session, cause: Event, measured: Measured, context: RunContext, request_id: str | None) -> None:
    verdict = judge(measured.measurement, context.requirements)
    session.add(BenchmarkRecord(
        run_id=str(cause.run_id), candidate=measured.model.candidate, variant=measured.model.variant,
        tree_digest=measured.model.tree_digest, request_id=request_id, passed=verdict.passed,
        measurement_key=measured.key, measurement_json=measured.measurement.model_dump_json(),
        verdict_json=verdict.model_dump_json()))


def _fits(ctx: HandlerContext, context: RunContext, models: dict[str, ModelArtifact]) -> domain.Fits:
    req = context.requirements

    def fits(result: domain.Result, variant: str) -> bool:
        model = models[result.candidate]
        if result.remote:  # a hosted API runs as it is: no variants, no memory here
            return variant == UNQUANTIZED
        if variant == UNQUANTIZED:
            return budget_for(ctx.store, model.tree_digest, model.params, variant, req).fits
        quantizer = quantizers.get(variant)
        if quantizer.unavailable(req.deployment.hardware.device) is not None:
            return False
        return budget_for(ctx.store, model.tree_digest, model.params, variant, req, quantizer=quantizer).fits

    return fits


def _rivals(ctx: HandlerContext, picked: Measured, measured: list[Measured], req: Requirements) -> list[Comparison]:
    """The selected candidate against each other one measured for this run (its size-class rivals and the smaller
    ones that did not pass), paired on the eval rows: is it measurably better than what was passed over?"""
    compared = (compare(ctx.store, other.measurement, picked.measurement, baseline_name=other.model.label,
                        candidate_name=picked.model.label, confidence=req.quality.confidence)
                for other in measured if other.model.candidate != picked.model.candidate)
    return [c for c in compared if c is not None]


@service.handles(RequirementsAccepted)
def on_accepted(event: RequirementsAccepted, ctx: HandlerContext) -> HandlerResult:
    """Benchmark size classes smallest first; stop at the first class that yields a selection (on a
    reroute, skipping what failed a canary under this version: see services.benchmark.domain)."""
    key = f"benchmark:{event.run_id}"  # one selection per accepted run, whatever event id a replay carries
    if ctx.done(key):
        return []
    context = event.context
    if not context.candidates:
        raise PermanentError("the run names no candidates")
    out: list[Event] = []
    measured_all: list[Measured] = []
    decisions: list[Decision] = []
    tried: list[domain.Result] = []
    models: dict[str, ModelArtifact] = {}
    for size_class in domain.class_order(c.size_class for c in context.candidates):
        batch = []
        for c in (c for c in context.candidates if c.size_class == size_class):
            tree = sources.get(c.source).tree(c, ctx.store)
            models[c.key] = ModelArtifact(candidate=c.key, source=c.source, tree_digest=tree, base_tree_digest=tree,
                                          params=c.params, size_class=c.size_class)
            batch.append(models[c.key])
        measured, unavailable = _measure(ctx, context, batch)
        measured_all += measured
        for model, error in unavailable:
            out.append(CandidateUnavailable.follow(event, candidate=model.candidate, source=model.source,
                                                   kind=error.kind, reason=str(error)))
            decisions.append(Decision(action="exclude", reason=f"{model.candidate} could not be measured "
                                                               f"({error.kind}): {error}"))
        results = [domain.Result(m.model.candidate, size_class, m.model.params, m.measurement,
                                 remote=is_remote(m.model.source)) for m in measured]
        for m in measured:
            out.append(CandidateBenchmarked.follow(event, model=m.model, measurement=m.measurement,
                                                   verdict=judge(m.measurement, context.requirements),
                                                   quality_gap=quality_gap(m.measurement, context.requirements)))
        tried += results
        choice = domain.decide_class(results, context, size_class, _fits(ctx, context, models))
        decisions.append(choice.decision)
        if choice.result is not None:
            picked = next(m for m in measured if m.model.candidate == choice.result.candidate)
            out.append(SelectionDecided.follow(
                event, context=context, model=picked.model, measurement=picked.measurement,
                quality_gap=quality_gap(picked.measurement, context.requirements), decisions=decisions,
                plan=choice.plan, comparisons=_rivals(ctx, picked, measured_all, context.requirements)))
            break
    else:
        unmeasured = [d.reason for d in decisions if d.action == "exclude"]
        recommendation = domain.recommend(tried, context.requirements) if tried else Decision(
            action="relax", reason="no candidate could be measured: " + "; ".join(unmeasured) +
            ": fix the endpoints (or their keys), or add candidates")
        out.append(NoCandidatePassed.follow(event, decisions=decisions, recommendation=recommendation))

    def commit(session: Session) -> Sequence[Event]:
        for m in measured_all:
            _record(session, event, m, context, None)
        return out

    return ctx.once(key, event, commit)


@service.handles(BenchmarkRequested)
def on_requested(event: BenchmarkRequested, ctx: HandlerContext) -> HandlerResult:
    """Re-benchmark a variant fitting made, on the same eval set; the answer goes to fitting alone."""
    key = f"variant:{event.request_id}"  # fitting asks once per attempt: one answer per request id
    if ctx.done(key):
        return []
    (measured,), _ = _measure(ctx, event.context, [event.model])  # fitting asks only for local variants
    req = event.context.requirements
    answer = VariantBenchmarked.follow(event, model=event.model, measurement=measured.measurement,
                                       verdict=judge(measured.measurement, req),
                                       quality_gap=quality_gap(measured.measurement, req), request_id=event.request_id)

    def commit(session: Session) -> Sequence[Event]:
        _record(session, event, measured, event.context, event.request_id)
        return [answer]

    return ctx.once(key, event, commit)
