"""What the classification tasks share, torch-free: labelled rows, label checks, metrics (scikit-learn) and their
intervals, the chat prompt, and measuring an API candidate over HTTP.

Their model work (scoring labels, embedding, batching, the general pass) is `classification_runtime`'s; a
subclass names its runtime in `runtime_class`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from weightflow.contracts.measurement import Interval, Measurement, SampleRow
from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.shared.modeling.datasets import Example, Pair
from weightflow.shared.modeling.protocols import Task
from weightflow.shared.modeling.tasks.base import sample_rows

if TYPE_CHECKING:
    import numpy as np

    from weightflow.shared.modeling.remote import Endpoint

LABELLED_SPLITS = ("eval", "canary", "train")
# How a chat model (an API candidate on route `chat`) is asked, unless task.prompt says otherwise.
CHAT_PROMPT = ("Classify the text into exactly one of these labels:\n{labels}\n\n"
               "Answer with the label name only.\n\nText: {input}")


def label_names(spec: TaskSpec) -> list[str]:
    if not spec.labels:
        raise ValueError("a classification task needs task.labels")
    return list(spec.labels)


class ClassificationTask(Task):
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1")
    row: ClassVar[type[BaseModel]] = Example
    general_row: ClassVar[type[BaseModel]] = Pair
    general_metric: ClassVar[str] = "spearman"
    batch_size: ClassVar[int] = 32
    max_length: ClassVar[int] = 128
    serves: ClassVar[frozenset[str]] = frozenset({"classify", "embeddings"})
    # label_scores / this, softmaxed, are the probabilities a served classification reports
    score_temperature: ClassVar[float] = 1.0

    # -- torch-free checks ------------------------------------------------------------------
    def check_spec(self, spec: TaskSpec, metric: str) -> list[str]:
        errors = super().check_spec(spec, metric)
        if not spec.labels:
            errors.append(f"task.labels: task {self.name} needs its labels, each with a description")
        return errors

    def check_rows(self, spec: TaskSpec, metric: str, split: str, rows: Sequence[BaseModel]) -> list[str]:
        if split not in LABELLED_SPLITS or not spec.labels:
            return []
        unknown = sorted({str(getattr(r, "label", "")) for r in rows} - set(spec.labels))
        if unknown:
            return [f"data.{split}: labels {unknown} are not in task.labels {sorted(spec.labels)}"]
        return []

    def check_labels(self, spec: TaskSpec, rows: Sequence[Any]) -> list[str]:
        if not rows:
            raise ValueError("evaluation needs at least one row")
        names = label_names(spec)
        unknown = sorted({r.label for r in rows} - set(names))
        if unknown:
            raise ValueError(f"rows use labels the task does not have: {unknown}; known: {names}")
        return names

    def score(self, names: list[str], rows: Sequence[Any], predicted: Sequence[str], metric: str,
              confidence: float) -> tuple[float, Interval, float, bool, dict[str, float]]:
        """(score, interval, per-row std, binary, every metric) of predicted labels against the rows'."""
        import numpy as np
        from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

        from weightflow.shared.stats import bootstrap, mean_interval

        truth = np.array([names.index(r.label) for r in rows])
        guess = np.array([names.index(p) if p in names else -1 for p in predicted])  # -1: no label, wrong
        ids = list(range(len(names)))

        def macro(t: np.ndarray, p: np.ndarray) -> float:
            return float(f1_score(t, p, labels=ids, average="macro", zero_division=0))

        precision, recall, _, _ = precision_recall_fscore_support(truth, guess, labels=ids, zero_division=0)
        extra = {"accuracy": float(accuracy_score(truth, guess)), "macro_f1": macro(truth, guess)}
        for i, name in enumerate(names):
            extra[f"precision/{name}"] = float(precision[i])
            extra[f"recall/{name}"] = float(recall[i])
        if metric == "accuracy":
            interval, std = mean_interval((truth == guess).astype(float), confidence)
            binary = True
        else:
            interval, standard_error = bootstrap((truth, guess), macro, confidence, resamples=500)
            std, binary = standard_error * math.sqrt(len(rows)), False
        return extra[metric], interval, std, binary, extra

    # -- over HTTP --------------------------------------------------------------------------
    def evaluate_remote(self, endpoint: Endpoint, spec: TaskSpec, rows: Sequence[Any], metric: str,
                        hardware: HardwareProfile, confidence: float = 0.95) -> Measurement:
        """One text per request, as a client would send it: `classify` reads the endpoint's label;
        `embeddings` picks the label whose description embeds nearest (the zero-shot rule, remotely)."""
        from weightflow.shared.modeling.remote import Caller, MalformedResponse, field_of, text_of
        from weightflow.shared.modeling.tasks.base import remote_measurement

        names = self.check_labels(spec, rows)
        route = self.remote_route(spec, endpoint.route)
        extra_counts: dict[str, float] = {}
        shown: list[str] | None = None
        with Caller(endpoint) as caller, caller.reading():
            if route == "chat":
                template = self.prompt_template(spec, route) or CHAT_PROMPT
                listing = "\n".join(f"- {n}: {(spec.labels or {})[n]}" for n in names)
                calls, seconds = caller.map("chat/completions", [
                    {"model": endpoint.model, "max_tokens": spec.max_new_tokens, "temperature": 0.0,
                     "messages": [{"role": "user",
                                   "content": template.replace("{labels}", listing).replace("{input}", r.text)}]}
                    for r in rows])
                answers = [text_of(c.body, "choices", 0, "message", "content") for c in calls]
                found = [label_in(a, names) for a in answers]
                extra_counts["unparsed_answers"] = float(sum(f is None for f in found))
                predicted = [f if f is not None else "" for f in found]  # an answer naming no label is wrong
                shown = [f if f is not None else a for f, a in zip(found, answers, strict=True)]  # what it said
            elif route == "classify":
                calls, seconds = caller.map("classify", [{"model": endpoint.model, "input": r.text} for r in rows])
                predicted = [str(field_of(c.body, "data", 0, "label")) for c in calls]
                strange = sorted(set(predicted) - set(names))
                if strange:
                    raise MalformedResponse(f"{endpoint.describe()} answered labels {strange[:5]} the task does not "
                                            f"have ({names}): is it serving another deployment?")
            else:
                prototypes = caller.post("embeddings", {"model": endpoint.model,
                                                        "input": [(spec.labels or {})[n] for n in names]})
                labels = _unit_rows([field_of(prototypes.body, "data", i, "embedding") for i in range(len(names))])
                calls, seconds = caller.map("embeddings", [{"model": endpoint.model, "input": r.text} for r in rows])
                texts = _unit_rows([field_of(c.body, "data", 0, "embedding") for c in calls])
                if texts.shape[1] != labels.shape[1]:
                    raise MalformedResponse(f"{endpoint.describe()} answered embeddings of {texts.shape[1]} and "
                                            f"{labels.shape[1]} dimensions")
                predicted = [names[int(i)] for i in (texts @ labels.T).argmax(axis=1)]
            score, interval, std, binary, extra = self.score(names, rows, predicted, metric, confidence)
            samples = labelled_samples(rows, predicted, [c.latency_ms for c in calls], shown=shown)
            return remote_measurement(caller, calls, seconds, score=score, metric=metric, interval=interval,
                                      score_std=std, binary=binary, hardware=hardware, extra=extra | extra_counts,
                                      samples=samples)

    def prompt_template(self, spec: TaskSpec, route: str) -> str | None:
        """A chat model is asked with `task.prompt` ({labels} and {input}) or weightflow's default."""
        return (spec.prompt or CHAT_PROMPT) if route == "chat" else None

def spearman_of_columns(values: Any) -> float:
    """Spearman between a pass's two columns (model cosine, gold similarity): the general score of any rows."""
    from scipy.stats import spearmanr

    return float(spearmanr(values[:, 0], values[:, 1]).statistic)


def labelled_samples(rows: Sequence[Any], predicted: Sequence[str], latencies_ms: Sequence[float], *,
                     shown: Sequence[str] | None = None) -> list[SampleRow]:
    """The sample log of a classification: each row's label as predicted (or, from a chat model whose answer
    named no label, the answer itself), scored 1 when right whatever the metric."""
    return sample_rows(rows, [r.text for r in rows], predicted if shown is None else shown, [r.label for r in rows],
                       [float(p == r.label) for p, r in zip(predicted, rows, strict=True)], latencies_ms)


def _unit_rows(vectors: Sequence[Any]) -> np.ndarray:
    """Embeddings from a response as an L2-normalised float matrix; MalformedResponse when they are not
    equal-length lists of numbers (base64 is never asked for)."""
    import numpy as np

    from weightflow.shared.modeling.remote import MalformedResponse

    try:
        matrix = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError):
        raise MalformedResponse("embeddings are not equal-length lists of numbers") from None
    if matrix.ndim != 2 or matrix.shape[1] == 0 or not np.isfinite(matrix).all():
        raise MalformedResponse(f"embeddings have shape {matrix.shape} or non-finite values")
    unit: np.ndarray = matrix / np.clip(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12, None)
    return unit


def label_in(answer: str, names: Sequence[str]) -> str | None:
    """The label a chat model's answer names: the whole first line when it is one (case and quotes
    aside), else the label named earliest as a word; None when it names none."""
    import re

    first = answer.strip().split("\n")[0].strip().strip("\"'`*.:").strip().lower()
    by_lower = {n.lower(): n for n in names}
    if first in by_lower:
        return by_lower[first]
    hits = [(m.start(), n) for n in names
            for m in [re.search(rf"(?<![\w-]){re.escape(n.lower())}(?![\w-])", answer.lower())] if m]
    return min(hits)[1] if hits else None
