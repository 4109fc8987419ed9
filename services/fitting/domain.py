"""Fitting decisions, pure: which schemes to try in which order, and where the fitted model goes next.

Schemes are tried in order of expected quality loss among those predicted to fit (nominal bytes per
parameter), then the rest by how much memory they save; each one tried is re-benchmarked before the fit
may complete. The prediction only orders and rules out: a variant it puts within the budget fits only if
its peak, measured at the serving shape in a process of its own, does (`judge_peak`). Where the fitted
model goes next is decided here, once, and carried in `FitCompleted`: tuning when a quality gap remains
that tuning may close (or a failed canary asked for it), else the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from weightflow.contracts.benchmark import UNQUANTIZED, FitPlan
from weightflow.contracts.fitting import MeasuredPeak, MemoryBudget
from weightflow.contracts.measurement import Comparison, Measurement
from weightflow.contracts.requirements import Requirements, RunContext
from weightflow.shared.modeling.placement import offloaded


@dataclass(frozen=True)
class SchemeInfo:
    scheme: str
    bytes_per_param: float
    expected_quality_loss: float
    unavailable: str | None
    predicted_fit: bool


def scheme_order(infos: Sequence[SchemeInfo]) -> list[SchemeInfo]:
    fitting = sorted((i for i in infos if i.predicted_fit), key=lambda i: (i.expected_quality_loss, -i.bytes_per_param))
    rest = sorted((i for i in infos if not i.predicted_fit), key=lambda i: i.bytes_per_param)
    return [*fitting, *rest]


def candidate_schemes(context: RunContext, plan: FitPlan) -> list[str]:
    q = context.requirements.quantization
    allowed = [q.force] if q.force else list(q.allowed)
    return [s for s in allowed if s not in plan.skip_variants and s != UNQUANTIZED]


def offload_allowed(context: RunContext, plan: FitPlan) -> bool:
    """Offload is tried after every allowed scheme, unless a scheme is forced or a loop-back ruled it out."""
    return not context.requirements.quantization.force and offloaded(UNQUANTIZED) not in plan.skip_variants


def keep_unquantized(fp32_fits: bool, context: RunContext, plan: FitPlan) -> bool:
    return fp32_fits and not context.requirements.quantization.force and UNQUANTIZED not in plan.skip_variants


def lost_too_much(req: Requirements, base: Measurement, variant: Measurement,
                  comparison: Comparison | None) -> str | None:
    """Why a variant is given up under `quantization.max_quality_loss` (the recovery rule: llm-compressor's CI
    asks >= 95 % recovery), or None. The loss is judged on the same rows, paired: on the estimate, the difference;
    on the lower bound, the largest loss the paired interval allows. Without sample logs to pair, the two scores."""
    limit = req.quantization.max_quality_loss
    if limit is None:
        return None
    # the paired loss is in row scores: the metric's own units only where the metric is their mean (accuracy,
    # exact match); for macro-F1 and the like the two metric scores are compared, the pairing shown beside
    in_metric_units = comparison is not None and (abs(comparison.baseline_score - base.score) < 1e-9
                                                  and abs(comparison.candidate_score - variant.score) < 1e-9)
    if comparison is None or not in_metric_units:
        loss = base.score - variant.score
        how = ("the difference of the two scores (no sample logs to pair)" if comparison is None else
               f"the difference of the two {variant.metric} scores, which row scores do not add up to")
    elif req.quality.decide_on == "lower_bound":
        loss = -comparison.interval.low
        how = f"the {comparison.interval.confidence:.0%} far bound of its paired loss"
    else:
        loss, how = -comparison.difference, "paired on the same rows"
    if loss <= limit:
        return None
    said = f": {comparison.describe()}" if comparison is not None else ""
    return (f"{variant.metric} loss {loss:.3f} against the unquantized model ({how}) is more than "
            f"quantization.max_quality_loss {limit:.3f}{said}")


@dataclass(frozen=True)
class Next:
    stage: str  # "tuning" | "registry"
    reason: str


@dataclass(frozen=True)
class Fail:
    reason: str


def next_stage(gap: float, context: RunContext, plan: FitPlan,
               excluded: Callable[[bool], bool] = lambda adapter: False) -> Next | Fail:
    """`excluded(adapter)`: did this (candidate, variant) fail a canary with/without an adapter?"""
    req = context.requirements
    has_data = context.data.train is not None and context.data.general is not None
    if plan.tune:
        if not has_data:
            return Fail("a failed canary asked for tuning, but data.train/data.general are missing")
        return Next("tuning", f"the canary missed by {plan.canary_gap:.3f}: train a LoRA adapter")
    if gap <= 0:
        if excluded(False):
            return Fail("this variant already failed a canary under these requirements")
        return Next("registry", "no quality gap: register as is")
    if gap > req.quality.tunable_gap:
        return Fail(f"quality gap {gap:.3f} exceeds the tunable gap {req.quality.tunable_gap:.3f}: choose a larger "
                    "candidate or relax quality.threshold")
    if not has_data:
        return Fail(f"a quality gap of {gap:.3f} remains but data.train/data.general are missing to tune it")
    return Next("tuning", f"quality gap {gap:.3f} ≤ {req.quality.tunable_gap:.3f}: train a LoRA adapter")


def judge_peak(predicted: MemoryBudget, *, peak_bytes: int, device: str, target_device: str, method: str,
               batch: int, context: int, serve_s: float) -> MeasuredPeak:
    """The fit decision: the measured peak against the budget, with the prediction's error beside it and a
    note when the peak was measured on another kind of device than the target (no GPU here for a GPU
    target: CPU's RSS also counts the tokenizer and host buffers that CUDA's allocator never sees, but not
    the CUDA allocator's rounding)."""
    measured_on = device.split(":")[0]
    note = ""
    if measured_on != target_device:
        note = (f"measured on {device}, the target is {target_device}: no {target_device} device here, so the "
                f"peak is {method}, not the target's own")
    return MeasuredPeak(peak_bytes=peak_bytes, predicted_bytes=predicted.total_bytes,
                        error=round((predicted.total_bytes - peak_bytes) / max(peak_bytes, 1), 4),
                        budget_bytes=predicted.budget_bytes, fits=peak_bytes <= predicted.budget_bytes,
                        device=device, target_device=target_device, method=method, batch=batch, context=context,
                        serve_s=serve_s, note=note)


def describe_peak(m: MeasuredPeak) -> str:
    verdict = "fits" if m.fits else "does not fit"
    mib = 1024 * 1024
    note = f" ({m.note})" if m.note else ""
    return (f"measured peak {m.peak_bytes / mib:.1f} MB at {m.batch} x {m.context} tokens {verdict} in "
            f"{m.budget_bytes / mib:.0f} MB; predicted {m.predicted_bytes / mib:.1f} MB ({m.error:+.0%}){note}")
