"""The evaluations a run's events carry, each with the sample log its measurement names.

One evaluation is announced by several events (a benchmark's measurement is repeated by the selection and the
fit; the registration baseline by every canary after it): the same measurement at the same stage of the same
model is one evaluation, named by the first event that says which model it measured. Two evaluations may share
one sample log (content-addressed: the same rows answered the same way). Shared by `weightflow samples` and the
HTML pages; torch-free, and the store is read only through the callable given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from weightflow.contracts.base import Event
from weightflow.contracts.measurement import Measurement, SampleRow
from weightflow.contracts.monitoring import CanaryFailed
from weightflow.shared.sample_logs import parse

WORST_SHOWN = 5
# Live canaries whose rows a report shows (a deployment watched for weeks has thousands; `weightflow samples` has
# the rest).
LATEST_CANARY_SAMPLES = 3

# What an event's measurement field measured, by (event name, field); anything else is named by its event.
STAGES = {
    ("CandidateBenchmarked", "measurement"): "benchmark",
    ("VariantBenchmarked", "measurement"): "variant benchmark",
    ("SelectionDecided", "measurement"): "benchmark",
    ("FitCompleted", "measurement"): "variant benchmark",
    ("TuningGated", "measurement"): "tuned with its adapter",
    ("ModelRegistered", "canary_baseline"): "registration canary",
    ("PromotionAwaitingApproval", "canary_baseline"): "registration canary",
    ("PromotionAwaitingApproval", "measurement"): "benchmark",
    ("CanaryPassed", "measurement"): "canary",
    ("CanaryPassed", "baseline"): "registration canary",
    ("CanaryFailed", "measurement"): "canary",
    ("CanaryFailed", "baseline"): "registration canary",
    ("CanaryFailed", "eval_measurement"): "benchmark",
}
# Fields that repeat a measurement another event announced first (named by it, when it is in the events).
REPEATS = {("SelectionDecided", "measurement"), ("FitCompleted", "measurement"),
           ("PromotionAwaitingApproval", "measurement"), ("PromotionAwaitingApproval", "canary_baseline"),
           ("CanaryPassed", "baseline"), ("CanaryFailed", "baseline"), ("CanaryFailed", "eval_measurement")}


@dataclass
class Evaluation:
    digest: str
    stage: str
    at: datetime
    measurement: Measurement
    candidate: str = ""
    variant: str = ""
    adapter: bool = False
    rows: list[SampleRow] = field(default_factory=list)

    @property
    def title(self) -> str:
        model = " ".join(p for p in (self.candidate, self.variant, "+adapter" if self.adapter else "") if p)
        m = self.measurement
        when = f" at {self.at:%H:%M:%S}" if self.stage == "canary" else ""
        return f"{self.stage}{when}: {model or '(model unknown)'} — {m.metric} {m.score:.3f} on {m.n} rows"

    def matches(self, name: str) -> bool:
        """`--candidate NAME`: the candidate, the variant, or both as `candidate/variant`."""
        return name in (self.candidate, self.variant, f"{self.candidate}/{self.variant}")

    def wrong(self) -> list[SampleRow]:
        return [r for r in self.rows if r.wrong]

    def worst(self, limit: int = WORST_SHOWN) -> list[SampleRow]:
        """The lowest-scored wrong rows, in the order evaluated among equals."""
        return sorted(self.wrong(), key=lambda r: r.score)[:limit]


def _model_of(e: Event) -> tuple[str, str, bool] | None:
    model = getattr(e, "model", None)
    if model is None or not hasattr(model, "candidate"):
        return None
    adapter = getattr(e, "adapter", None) is not None or getattr(model, "adapter_digest", None) is not None
    return model.candidate, model.variant, adapter


def _named(e: Event, name: str) -> tuple[str, str]:
    """(event class, field) as the tables name it: a routed subclass (FitNeedsTuning, AdapterRefused) is found
    under the event it specialises."""
    return next(((cls.__name__, name) for cls in type(e).__mro__ if (cls.__name__, name) in STAGES),
                (type(e).__name__, name))


def _stage(e: Event, name: str) -> str:
    if isinstance(e, CanaryFailed) and e.before_promotion and name == "measurement":
        return "registration canary"
    return STAGES.get(_named(e, name), f"{type(e).__name__} {name}")


def evaluations(events: Sequence[Event]) -> tuple[list[Evaluation], int]:
    """Every evaluation with a sample log, in the order first announced; and how many measurements carried none
    (taken by a release before sample logs, or by a task that keeps none)."""
    found: list[Evaluation] = []
    # indexes into `found` by (stage, identity) and by identity alone: a watched deployment has thousands of
    # canaries, so no scan of everything found so far per measurement
    by_key: dict[tuple[str, str], list[int]] = {}
    by_identity: dict[str, list[int]] = {}
    without = 0
    for e in events:
        model = _model_of(e)
        for name in type(e).model_fields:
            m = getattr(e, name)
            if not isinstance(m, Measurement):
                continue
            if m.samples is None:
                without += 1
                continue
            stage = _stage(e, name)
            # one evaluation announced twice is one: the same measurement again at its stage (a baseline by each
            # canary), or where an event only repeats one (a selection, a fit); every live canary is its own
            key = (stage, str(e.event_id) if stage == "canary" else m.model_dump_json())
            repeats = _named(e, name) in REPEATS
            candidates = sorted(set(by_key.get(key, [])) | set(by_identity.get(key[1], []) if repeats else []))
            same = [f for f in (found[i] for i in candidates)
                    if model is None or not f.candidate or (f.candidate, f.variant, f.adapter) == model]
            if not same:
                found.append(Evaluation(m.samples, stage, e.occurred_at, m))
                by_key.setdefault(key, []).append(len(found) - 1)
                by_identity.setdefault(key[1], []).append(len(found) - 1)
                same = found[-1:]
            if model is not None and not same[0].candidate:  # a registration names no model; its canaries do
                same[0].candidate, same[0].variant, same[0].adapter = model
    return found, without


def read_rows(evaluation: Evaluation, read_bytes: Callable[[str], bytes]) -> str | None:
    """Fill the evaluation's rows from the store; why not, when its log cannot be read here."""
    try:
        evaluation.rows = parse(read_bytes(evaluation.digest))
    except Exception as exc:  # a log missing on this host, or damaged, is a line of output, never a crash
        return f"the sample log {evaluation.digest[:12]} is not readable here: {str(exc)[:200]}"
    return None


def shown(found: Sequence[Evaluation]) -> list[Evaluation]:
    """What a report shows rows of: every evaluation but the live canaries, of which only the latest few."""
    canaries = [e for e in found if e.stage == "canary"]
    return [e for e in found if e.stage != "canary" or e in canaries[-LATEST_CANARY_SAMPLES:]]
