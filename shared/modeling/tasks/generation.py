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
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.registry import tasks
from weightflow.shared.modeling.tasks import text_metrics
from weightflow.shared.modeling.tasks.base import measurement, request_latencies_ms, sample_rows, timed
from weightflow.shared.modeling.tasks.language import LanguageTask, _Row, first_line, render_prompt

if TYPE_CHECKING:
    import torch

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

    def check_rows(self, spec: TaskSpec, metric: str, split: str, rows: Sequence[BaseModel]) -> list[str]:
        if metric != "regex":
            return []
        for row in rows:
            problem = text_metrics.check_patterns(getattr(row, "all_targets", []))
            if problem is not None:
                return [f"data.{split} ({getattr(row, 'id', '?')}): {problem}"]
        return []

    def generate(self, loaded: LoadedModel, spec: TaskSpec, inputs: Sequence[str], max_new_tokens: int | None = None
                 ) -> tuple[list[str], int]:
        """(answers, tokens generated) for a batch, greedy."""
        import torch

        prompts = [self.prompt(loaded, spec, text) for text in inputs]
        batch = self.encode(loaded, prompts, side="left", add_special=not spec.chat_template)
        tokenizer = loaded.tokenizer
        with torch.inference_mode():
            out: torch.Tensor = loaded.model.generate(
                **batch, max_new_tokens=max_new_tokens or spec.max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        produced = int((new != tokenizer.pad_token_id).sum())
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        return [first_line(t) for t in texts], produced

    def predict(self, loaded: LoadedModel, spec: TaskSpec, inputs: Sequence[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(inputs), self.batch_size):
            out += self.generate(loaded, spec, inputs[i: i + self.batch_size])[0]
        return out

    def evaluate(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any], metric: str,
                 hardware: HardwareProfile, confidence: float = 0.95) -> Measurement:
        import numpy as np

        if not rows:
            raise ValueError("evaluation needs at least one row")
        produced = [0]

        def run(batch: Sequence[GenerationRow]) -> list[str]:
            answers: list[str] = []
            for i in range(0, len(batch), self.batch_size):
                chunk, count = self.generate(loaded, spec, [r.input for r in batch[i: i + self.batch_size]])
                answers += chunk
                produced[0] += count
            return answers

        answers, seconds = timed(run, list(rows), loaded.device)
        tokens = produced[0]
        latencies = request_latencies_ms(run, list(rows), loaded.device, LATENCY_SAMPLES)

        def first_token(batch: Sequence[GenerationRow]) -> list[str]:
            return self.generate(loaded, spec, [r.input for r in batch], max_new_tokens=1)[0]

        ttft = request_latencies_ms(first_token, list(rows), loaded.device, LATENCY_SAMPLES)
        score, interval, std, binary, extra = self.score(answers, rows, metric, confidence)
        extra |= {"ttft_ms_p50": float(np.percentile(ttft, 50)), "tokens_per_s": tokens / seconds if seconds else 0.0,
                  "tokens_per_task": tokens / len(rows)}
        return measurement(score=score, metric=metric, n=len(rows), interval=interval, score_std=std, binary=binary,
                           latencies_ms=latencies, seconds=seconds, hardware=hardware, extra=extra,
                           samples=answer_samples(rows, answers, metric, latencies))

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

    def training_loss(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> torch.Tensor:
        prompts = [self.prompt(loaded, spec, r.input) for r in rows]
        return self.target_loss(loaded, prompts, [f" {r.all_targets[0]}" if not spec.chat_template else
                                                  r.all_targets[0] for r in rows])


def answer_samples(rows: Sequence[Any], answers: Sequence[str], metric: str, latencies_ms: Sequence[float]
                   ) -> list[SampleRow]:
    """The sample log of a generation: each answer, its accepted targets and its score on the task's metric."""
    return sample_rows(rows, [r.input for r in rows], answers, [" | ".join(r.all_targets) for r in rows],
                       [text_metrics.METRICS[metric](a, r.all_targets) for a, r in zip(answers, rows, strict=True)],
                       latencies_ms)


tasks.register(Generation.name, Generation())
