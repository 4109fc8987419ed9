"""Fitting service: fits the selected model to the target's memory, quantizing only when needed.

Every quantized variant is re-benchmarked (a `BenchmarkRequested`, answered by `VariantBenchmarked`)
before the fit completes, because quantization can cost quality or speed the requirements do not
allow; a variant that misses is followed by the next scheme, and every attempt is recorded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from uuid import uuid5

from pydantic import BaseModel
from sqlmodel import Session

from weightflow.contracts.base import Event, utcnow
from weightflow.contracts.benchmark import (
    UNQUANTIZED,
    BenchmarkRequested,
    ModelArtifact,
    SelectionDecided,
    VariantBenchmarked,
)
from weightflow.contracts.fitting import (
    FitCompleted,
    FitFailed,
    FitNeedsTuning,
    FitSkipped,
    MeasuredPeak,
    MemoryBudget,
    MemoryBudgetComputed,
)
from weightflow.contracts.measurement import Comparison, Measurement
from weightflow.contracts.requirements import Requirements
from weightflow.services.fitting import domain
from weightflow.services.fitting.peaks import PeakCache
from weightflow.services.fitting.tables import FitAttempt
from weightflow.shared.bus import HandlerContext, HandlerResult, OrphanError, Service
from weightflow.shared.comparisons import compare
from weightflow.shared.modeling import budget, placement
from weightflow.shared.modeling.device import pick_device
from weightflow.shared.modeling.registry import quantizers
from weightflow.shared.modeling.stored import budget_for, is_remote, rows, task_of

log = logging.getLogger(__name__)
# What a peak measurement in its own process can end in besides a result: the child failed (out of memory, an
# import error, a model it cannot run), ran past its time, or could not be started or read.
UNMEASURABLE = (RuntimeError, OSError, ValueError, subprocess.SubprocessError)

service = Service("fitting")
OFFLOAD = "offload"  # the last entry of a fit's list of steps to try, after every allowed scheme
OFFLOAD_TRIES = 2  # a placement measured over the budget is shrunk by its excess and measured once more


def _stored_weight_bytes(ctx: HandlerContext, tree_digest: str) -> int:
    return sum(ctx.store.size_of(d) for name, d in ctx.store.tree_files(tree_digest).items()
               if name.endswith(".safetensors"))


class _Fitted(BaseModel):
    """What a fit attempt keeps of its variant's memory while the re-benchmark runs (`budget_json`)."""

    budget: MemoryBudget
    measured: MeasuredPeak | None = None


def _load_fitted(text: str) -> _Fitted:
    data = json.loads(text)
    # rows written before the measured peak was kept hold a bare MemoryBudget
    return _Fitted.model_validate(data if "budget" in data else {"budget": data})


def _measure(peaks: PeakCache, model_dir: Path, tree_digest: str, req: Requirements,
             predicted: MemoryBudget) -> MeasuredPeak | str:
    """The variant's peak at the serving shape, in a child process, judged against the budget; or why it could
    not be measured (then the variant is not chosen: a fit rests on a measurement, and a handler that raised
    would only measure again on every redelivery until the event is dead-lettered with no reason given)."""
    try:
        peak, cached = peaks.measure(model_dir, tree_digest, req)
    except UNMEASURABLE as exc:
        log.warning("the peak of %s could not be measured", model_dir, exc_info=True)
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
        return f"its peak memory could not be measured ({said}), so it is not chosen"
    judged = domain.judge_peak(predicted, peak_bytes=peak.peak_bytes, device=peak.device,
                             target_device=req.deployment.hardware.device, method=peak.method, batch=peak.batch,
                             context=peak.context, serve_s=peak.serve_s)
    return judged.model_copy(update={"note": "; ".join(n for n in (judged.note, cached) if n)}) if cached else judged


def _complete(cause: Event, selection: SelectionDecided, model: ModelArtifact, m: Measurement, b: MemoryBudget,
              gap: float, steps: list[str], measured: MeasuredPeak | None,
              comparison: Comparison | None = None) -> Event:
    context = selection.context
    decision = domain.next_stage(gap, context, selection.plan,
                                 lambda adapter: context.excluded(model.candidate, model.variant, adapter))
    if isinstance(decision, domain.Fail):
        return FitFailed.follow(cause, reason=f"{model.candidate} {model.variant}: {decision.reason}", steps=steps)
    fit = {"context": context, "model": model, "measurement": m, "budget": b, "measured": measured,
           "quality_gap": gap, "steps": [*steps, f"next: {decision.stage} ({decision.reason})"],
           "next_stage": decision.stage, "comparison": comparison}
    if decision.stage == "tuning":  # the route is the event's type: tuning consumes FitNeedsTuning alone
        return FitNeedsTuning.follow(cause, **fit, tune_reason=decision.reason)
    return FitCompleted.follow(cause, **fit)


def _try_schemes(cause: Event, selection: SelectionDecided, schemes: list[str], steps: list[str],
                 ctx: HandlerContext, peaks: PeakCache) -> tuple[list[Event], FitAttempt | None]:
    """Quantize with the first scheme that runs here and fits; ask for its re-benchmark."""
    req = selection.context.requirements
    hw = req.deployment.hardware
    task = task_of(req.task)
    out: list[Event] = []
    for i, scheme in enumerate(schemes):
        if scheme == OFFLOAD:
            break
        quantizer = quantizers.get(scheme)
        why_not = quantizer.unavailable(hw.device)
        if why_not is not None:
            steps.append(f"{scheme}: skipped, {why_not}")
            continue
        data = selection.context.data
        calibration = rows(ctx.store, data.train or data.eval, task, "train" if data.train else "eval")
        with tempfile.TemporaryDirectory(prefix="wf-fit-") as tmp:
            quantizer.quantize(task, ctx.store.materialize_tree(selection.model.tree_digest), Path(tmp) / scheme,
                               req.task, calibration, pick_device(ctx.settings.device))
            tree = ctx.store.put_tree(Path(tmp) / scheme)
            b = budget_for(ctx.store, selection.model.tree_digest, selection.model.params, scheme, req,
                           weight_bytes=_stored_weight_bytes(ctx, tree))
            steps.append(f"quantized to {scheme}: predicted {budget.describe(b)}")
            # the prediction rules a variant out, never in: one it puts within the budget is measured
            outcome = _measure(peaks, Path(tmp) / scheme, tree, req, b) if b.fits else None
        variant = selection.model.model_copy(update={"variant": scheme, "tree_digest": tree})
        measured = outcome if isinstance(outcome, MeasuredPeak) else None
        out.append(MemoryBudgetComputed.follow(cause, budget=b, measured=measured))
        if isinstance(outcome, str):
            steps.append(f"{scheme}: {outcome}")
        if measured is None:
            continue
        steps.append(f"{scheme}: {domain.describe_peak(measured)}")
        if not measured.fits:
            continue
        request_id = str(uuid5(cause.event_id, scheme))
        attempt = FitAttempt(request_id=request_id, run_id=str(cause.run_id),
                             selection_json=selection.model_dump_json(), model_json=variant.model_dump_json(),
                             budget_json=_Fitted(budget=b, measured=measured).model_dump_json(),
                             steps_json=json.dumps(steps),
                             remaining_json=json.dumps(schemes[i + 1:]))
        out.append(BenchmarkRequested.follow(cause, context=selection.context, model=variant, request_id=request_id))
        return out, attempt
    if OFFLOAD in schemes:
        more, offloaded = _try_offload(cause, selection, [s for s in schemes if s != OFFLOAD], steps, ctx, peaks)
        return [*out, *more], offloaded
    out.append(FitFailed.follow(cause, steps=steps, reason=(
        f"no variant of {selection.model.candidate} fits {hw.memory_mb:g} MB and meets the requirements "
        f"as measured at the serving shape (tried: {', '.join(schemes) or 'nothing: no scheme left to try'}); "
        "choose hardware with more memory, allow more schemes or a smaller candidate")))
    return out, None


def _linked_copy(model_dir: Path, out_dir: Path) -> Path:
    """The checkpoint's files in a folder of their own: hard links where the store allows, else copies."""
    out_dir.mkdir(parents=True)
    for source in model_dir.iterdir():
        if source.is_file():
            try:
                os.link(source, out_dir / source.name)
            except OSError:
                shutil.copyfile(source, out_dir / source.name)
    return out_dir


def _try_offload(cause: Event, selection: SelectionDecided, tried: list[str], steps: list[str],
                 ctx: HandlerContext, peaks: PeakCache) -> tuple[list[Event], FitAttempt | None]:
    """The last resort: the unquantized model with as many weights on the target as the budget leaves beside
    activations and the runtime, the rest offloaded (accelerate's device map: on disk for a CPU target, in host
    memory for a GPU). It is measured like any variant and, when its peak fits, re-benchmarked: it is chosen only
    if it still meets the latency and cost ceilings on the team's eval set (the offload's price is latency)."""
    req = selection.context.requirements
    hw = req.deployment.hardware
    fp32 = budget_for(ctx.store, selection.model.tree_digest, selection.model.params, UNQUANTIZED, req)
    fixed = fp32.activation_bytes + fp32.runtime_bytes
    tried_text = ", ".join(tried) or "no quantization scheme"
    refusal = (f"no variant of {selection.model.candidate} fits {hw.memory_mb:g} MB and meets the requirements as "
               f"measured at the serving shape (tried: {tried_text}, then offload)")
    if fixed >= fp32.budget_bytes:
        steps.append(f"offload: cannot help, activations and runtime alone take {fixed / budget.MB:.0f} MB of "
                     f"{hw.memory_mb:g} MB")
        return [FitFailed.follow(cause, steps=steps, reason=(
            f"{refusal}; choose hardware with more memory, a smaller serving context or a smaller candidate"))], None
    on_device = int((fp32.budget_bytes - fixed) / (1 + fp32.overhead_fraction))
    variant_name = placement.offloaded(UNQUANTIZED)
    out: list[Event] = []
    with tempfile.TemporaryDirectory(prefix="wf-fit-") as tmp:
        model_dir = _linked_copy(ctx.store.materialize_tree(selection.model.tree_digest), Path(tmp) / "offload")
        for _ in range(OFFLOAD_TRIES):
            placed = placement.plan(hw.device, on_device)
            placement.write(model_dir, placed)
            b = fp32.model_copy(update={"variant": variant_name, "weight_bytes": min(on_device, fp32.weight_bytes),
                                        "total_bytes": fp32.budget_bytes, "fits": True})
            tree = ctx.store.put_tree(model_dir)  # the placement is part of the tree: its digest keys the peak
            outcome = _measure(peaks, model_dir, tree, req, b)
            measured = outcome if isinstance(outcome, MeasuredPeak) else None
            out.append(MemoryBudgetComputed.follow(cause, budget=b, measured=measured))
            steps.append(f"{variant_name}: {placed.describe()}; "
                         f"{domain.describe_peak(measured) if measured else outcome}")
            if measured is None or measured.fits or on_device == 0:
                break
            # Over by the modules streamed in from the offload (their working copies), not by what stays: keep
            # that much less on the device and measure once more.
            on_device = max(0, on_device - int((measured.peak_bytes - measured.budget_bytes) * 1.1))
    if measured is None or not measured.fits:
        why = (f"offloaded, its peak was measured at {measured.peak_bytes / budget.MB:.0f} MB, still over the "
               f"budget, and a serving batch of {measured.batch} x {measured.context} tokens took "
               f"{measured.serve_s * 1000:.0f} ms" if measured else f"offloaded, {outcome}")
        out.append(FitFailed.follow(cause, steps=steps, reason=(
            f"{refusal}: {why}; choose hardware with more memory, allow more schemes or a smaller candidate")))
        return out, None
    variant = selection.model.model_copy(update={"variant": variant_name, "tree_digest": tree})
    request_id = str(uuid5(cause.event_id, variant_name))
    attempt = FitAttempt(request_id=request_id, run_id=str(cause.run_id),
                         selection_json=selection.model_dump_json(), model_json=variant.model_dump_json(),
                         budget_json=_Fitted(budget=b, measured=measured).model_dump_json(),
                         steps_json=json.dumps(steps), remaining_json="[]")
    out.append(BenchmarkRequested.follow(cause, context=selection.context, model=variant, request_id=request_id))
    return out, attempt


def _skip_remote(event: SelectionDecided) -> list[Event]:
    """A hosted API runs on its provider's hardware as it is: register it as measured."""
    model, hw = event.model, event.context.requirements.deployment.hardware
    fitting = (f"{model.candidate} is a hosted API: it runs on the provider's hardware, so there is no memory "
               "budget to meet and nothing to quantize, shard or offload")
    tuning = (f"{model.candidate}'s weights are not here: LoRA needs the base model, so a quality gap cannot be "
              "tuned away (selection only picks an API that clears every requirement)")
    none = MemoryBudget(variant=model.variant, params=0, bytes_per_param=0.0, weight_bytes=0, overhead_fraction=0.0,
                        activation_bytes=0, runtime_bytes=0, total_bytes=0, budget_bytes=int(hw.memory_mb * budget.MB),
                        fits=True)
    return [FitSkipped.follow(event, candidate=model.candidate, source=model.source, reason=fitting,
                              tuning_reason=tuning),
            FitCompleted.follow(event, context=event.context, model=model, measurement=event.measurement,
                                budget=none, quality_gap=event.quality_gap, next_stage="registry",
                                steps=[f"fitting skipped: {fitting}", f"tuning skipped: {tuning}",
                                       "next: registry (a hosted API is registered as measured)"])]


@service.handles(SelectionDecided)
def on_selected(event: SelectionDecided, ctx: HandlerContext) -> HandlerResult:
    """Budget the selected model; quantize when it does not fit (or when forced, or when its unquantized
    form failed a canary) and re-benchmark the variant. A hosted API skips both fitting and tuning."""
    key = f"fit:{event.run_id}"  # benchmark selects once per run: a replayed selection fits nothing again
    if ctx.done(key):
        return []
    if is_remote(event.model.source):
        return ctx.once(key, event, _skip_remote(event))
    req = event.context.requirements
    hw = req.deployment.hardware
    peaks = PeakCache(ctx, str(event.run_id))
    fp32 = budget_for(ctx.store, event.model.tree_digest, event.model.params, UNQUANTIZED, req)
    out: list[Event] = [MemoryBudgetComputed.follow(event, budget=fp32)]
    steps = [budget.describe(fp32)]
    if domain.keep_unquantized(fp32.fits, event.context, event.plan):
        outcome = _measure(peaks, ctx.store.materialize_tree(event.model.tree_digest), event.model.tree_digest, req,
                           fp32)
        measured = outcome if isinstance(outcome, MeasuredPeak) else None
        out = [MemoryBudgetComputed.follow(event, budget=fp32, measured=measured)]
        steps.append(domain.describe_peak(measured) if measured else f"unquantized: {outcome}")
        if measured is not None and measured.fits:
            steps.append("no change needed: the unquantized model fits")
            out.append(_complete(event, event, event.model, event.measurement, fp32, event.quality_gap, steps,
                                 measured))
            return ctx.once(key, event, peaks.keeping(out))
        steps.append("the unquantized model does not fit as measured: quantize")
    infos = []
    for scheme in domain.candidate_schemes(event.context, event.plan):
        q = quantizers.get(scheme)
        predicted = budget_for(ctx.store, event.model.tree_digest, event.model.params, scheme, req, quantizer=q)
        infos.append(domain.SchemeInfo(scheme, q.bytes_per_param, q.expected_quality_loss, q.unavailable(hw.device),
                                       predicted.fits))
    ordered = [i.scheme for i in domain.scheme_order(infos)]
    if domain.offload_allowed(event.context, event.plan):
        ordered.append(OFFLOAD)
    more, attempt = _try_schemes(event, event, ordered, steps, ctx, peaks)

    def commit(session: Session) -> Sequence[Event]:
        if attempt is not None:
            session.add(attempt)
        return [*out, *more]

    return ctx.once(key, event, peaks.keeping(commit))


@service.handles(VariantBenchmarked)
def on_benchmarked(event: VariantBenchmarked, ctx: HandlerContext) -> HandlerResult:
    """The re-benchmark of a variant this service made: complete the fit, or try the next scheme."""
    attempt = ctx.read(lambda session: session.get(FitAttempt, event.request_id))
    if attempt is None:
        raise OrphanError(f"no fit attempt {event.request_id} is waiting for this re-benchmark")
    if attempt.status != "benchmarking":
        return []
    selection = SelectionDecided.model_validate_json(attempt.selection_json)
    model = ModelArtifact.model_validate_json(attempt.model_json)
    peaks = PeakCache(ctx, str(event.run_id))
    fitted = _load_fitted(attempt.budget_json)
    b = fitted.budget
    steps: list[str] = json.loads(attempt.steps_json)
    m = event.measurement
    steps.append(f"re-benchmarked {model.variant}: score {m.score:.3f}, p95 {m.latency_ms_p95:.1f} ms, "
                 f"${m.cost_per_1k_usd:.4f}/1k")
    comparison = compare(ctx.store, selection.measurement, m, baseline_name=selection.model.label,
                         candidate_name=model.label, confidence=selection.context.requirements.quality.confidence)
    if comparison is not None:
        steps.append(f"paired on the eval rows: {comparison.describe()}")
    # A variant is given up when it misses anything but quality, or quality by more than tuning may close;
    # then the next scheme is tried. Otherwise the fit completes (or fails for a reason no scheme changes).
    # A variant that lost more than quantization.max_quality_loss against its base is given up the same way.
    blocking = [miss.message() for miss in event.verdict.misses if miss.kind != "quality"]
    lost = domain.lost_too_much(selection.context.requirements, selection.measurement, m, comparison)
    if lost is not None:
        blocking.append(lost)
    remaining: list[str] = json.loads(attempt.remaining_json)
    completion = _complete(event, selection, model, m, b, event.quality_gap, steps, fitted.measured, comparison)
    follow_up: FitAttempt | None = None
    if blocking or (isinstance(completion, FitFailed) and event.quality_gap > 0 and remaining):
        missed = blocking or [x.message() for x in event.verdict.misses]
        steps.append(f"{model.variant} misses: {'; '.join(missed)}")
        more, follow_up = _try_schemes(event, selection, remaining, steps, ctx, peaks)
        status = "failed"
    else:
        more = [completion]
        status = "completed" if isinstance(completion, FitCompleted) else "failed"

    def commit(session: Session) -> Sequence[Event]:
        row = session.get(FitAttempt, event.request_id)
        if row is None or row.status != "benchmarking":
            return []
        row.status, row.finished_at = status, utcnow()
        session.add(row)
        if follow_up is not None:
            session.add(follow_up)
        peaks.save(session)
        return more

    return commit
