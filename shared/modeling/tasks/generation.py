"""`generation`: a causal LM answers each input; the answer is scored against its target(s).

Rows are `{"id", "input", "target"}` (or `"targets": [...]`). The prompt is `task.prompt` with `{input}`
(optionally wrapped in the tokenizer's chat template); decoding is greedy, batched with left padding,
at most `task.max_new_tokens`; the answer is the generated text up to its first line break. Metrics:
`exact_match`, `contains`, `regex`, `chrf` (shared.modeling.tasks.text_metrics). Besides latency per
request it measures time to first token and tokens per second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from weightflow.contracts.limits import MAX_TEXT_CHARS
from weightflow.contracts.measurement import Interval, Measurement, SampleRow
from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.shared.modeling.protocols import TaskRuntime
from weightflow.shared.modeling.registry import tasks
from weightflow.shared.modeling.tasks import text_metrics
from weightflow.shared.modeling.tasks.base import sample_rows
from weightflow.shared.modeling.tasks.language import LanguageTask, _Row, first_line, render_prompt

if TYPE_CHECKING:
    from weightflow.shared.modeling.remote import Endpoint

LATENCY_SAMPLES = 8


class GenerationRow(_Row):
    id: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    target: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    targets: list[str] | None = Field(default=None, min_length=1, max_length=20)

    @model_validator(mode="after")
    def _has_target(self) -> GenerationRow:
        if self.target is None and not self.targets:
            raise ValueError("a generation row needs target (or targets)")
        return self

    @property
    def all_targets(self) -> list[str]:
        return [*([self.target] if self.target is not None else []), *(self.targets or [])]


class Generation(LanguageTask):
    name: ClassVar[str] = "generation"
    remote_routes: ClassVar[tuple[str, ...]] = ("chat", "completions")
    metrics: ClassVar[tuple[str, ...]] = ("exact_match", "contains", "regex", "chrf")
    row: ClassVar[type[BaseModel]] = GenerationRow
    runtime_class: ClassVar[type[TaskRuntime] | str] = ".generation_runtime:GenerationRuntime"

    def check_rows(self, spec: TaskSpec, metric: str, split: str, rows: Sequence[BaseModel]) -> list[str]:
        if metric != "regex":
            return []
        for row in rows:
            problem = text_metrics.check_patterns(getattr(row, "all_targets", []))
            if problem is not None:
                return [f"data.{split} ({getattr(row, 'id', '?')}): {problem}"]
        return []

    def score(self, answers: Sequence[str], rows: Sequence[Any], metric: str, confidence: float
              ) -> tuple[float, Interval, float, bool, dict[str, float]]:
        """(score, interval, per-row std, binary, every metric) of the answers against the rows' targets."""
        import numpy as np

        from weightflow.shared.stats import bootstrap, mean_interval

        per_row = [text_metrics.METRICS[metric](a, r.all_targets) for a, r in zip(answers, rows, strict=True)]
        extra = {name: float(np.mean([fn(a, r.all_targets) for a, r in zip(answers, rows, strict=True)]))
                 for name, fn in text_metrics.METRICS.items() if name != "regex"}
        if metric in text_metrics.BINARY:
            interval, std = mean_interval(per_row, confidence)
        else:
            interval, _ = bootstrap((np.asarray(per_row),), np.mean, confidence, resamples=500)
            std = float(np.std(per_row, ddof=1)) if len(per_row) > 1 else 0.0
        return float(np.mean(per_row)), interval, std, metric in text_metrics.BINARY, extra

    # -- over HTTP --------------------------------------------------------------------------
    def default_route(self, spec: TaskSpec) -> str:
        """The route that sends the prompt as the local run builds it: chat when the task wraps it in a
        chat template, the raw prompt otherwise."""
        return "chat" if spec.chat_template else "completions"

    def evaluate_remote(self, endpoint: Endpoint, spec: TaskSpec, rows: Sequence[Any], metric: str,
                        hardware: HardwareProfile, confidence: float = 0.95) -> Measurement:
        """One row per request, greedy (temperature 0), at most `task.max_new_tokens`; the answer is the
        reply up to its first line break, as locally."""
        from weightflow.shared.modeling.remote import Caller, text_of
        from weightflow.shared.modeling.tasks.base import remote_measurement

        if not rows:
            raise ValueError("evaluation needs at least one row")
        route = self.remote_route(spec, endpoint.route)
        bodies = [render_prompt(spec, r.input) for r in rows]
        common = {"model": endpoint.model, "max_tokens": spec.max_new_tokens, "temperature": 0.0}
        with Caller(endpoint) as caller, caller.reading():
            if route == "chat":
                calls, seconds = caller.map("chat/completions", [
                    {**common, "messages": [{"role": "user", "content": b}]} for b in bodies])
                replies = [text_of(c.body, "choices", 0, "message", "content") for c in calls]
            else:
                calls, seconds = caller.map("completions", [{**common, "prompt": b} for b in bodies])
                replies = [text_of(c.body, "choices", 0, "text") for c in calls]
            answers = [first_line(r) for r in replies]
            score, interval, std, binary, extra = self.score(answers, rows, metric, confidence)
            return remote_measurement(caller, calls, seconds, score=score, metric=metric, interval=interval,
                                      score_std=std, binary=binary, hardware=hardware, extra=extra,
                                      samples=answer_samples(rows, answers, metric, [c.latency_ms for c in calls]))



def answer_samples(rows: Sequence[Any], answers: Sequence[str], metric: str, latencies_ms: Sequence[float]
                   ) -> list[SampleRow]:
    """The sample log of a generation: each answer, its accepted targets and its score on the task's metric."""
    return sample_rows(rows, [r.input for r in rows], answers, [" | ".join(r.all_targets) for r in rows],
                       [text_metrics.METRICS[metric](a, r.all_targets) for a, r in zip(answers, rows, strict=True)],
                       latencies_ms)


tasks.register(Generation.name, Generation())
