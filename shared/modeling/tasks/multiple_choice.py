"""`multiple-choice`: a causal LM picks the choice it finds most likely after the prompt.

Rows are `{"id", "input", "choices": [...], "label": i}`. Each choice is scored by the log-likelihood of
its tokens after the prompt; with `task.length_normalise` (the default) by the mean per token, so long
choices are not penalised for their length. Metric: accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from weightflow.contracts.limits import MAX_TEXT_CHARS
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.registry import tasks
from weightflow.shared.modeling.tasks.base import measurement, request_latencies_ms, sample_rows, timed
from weightflow.shared.modeling.tasks.language import MAX_PROMPT_TOKENS, LanguageTask, _Row

if TYPE_CHECKING:
    import torch

LATENCY_SAMPLES = 8


class ChoiceRow(_Row):
    id: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    choices: list[str] = Field(min_length=2, max_length=10)
    label: int

    @model_validator(mode="after")
    def _label_in_range(self) -> ChoiceRow:
        if not 0 <= self.label < len(self.choices):
            raise ValueError(f"label {self.label} is not an index of the {len(self.choices)} choices")
        return self


class MultipleChoice(LanguageTask):
    name: ClassVar[str] = "multiple-choice"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    row: ClassVar[type[BaseModel]] = ChoiceRow
    batch_size: ClassVar[int] = 16  # (prompt, choice) pairs per forward pass, of one row or several

    def serving_context(self, spec: TaskSpec) -> int:
        return MAX_PROMPT_TOKENS  # prompt and choice, scored in one forward pass; nothing is generated

    def choose(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[ChoiceRow]) -> list[int]:
        """The chosen index per row; every (prompt, choice) pair of several rows goes in one forward pass."""
        pairs = [(self.prompt(loaded, spec, r.input), f" {c}") for r in rows for c in r.choices]
        sums: list[float] = []
        counts: list[int] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i: i + self.batch_size]
            s, c = self.continuation_logprobs(loaded, [p for p, _ in chunk], [c for _, c in chunk])
            sums += s.tolist()
            counts += c.tolist()
        picked, start = [], 0
        for r in rows:
            scores = [sums[start + j] / max(counts[start + j], 1) if spec.length_normalise else sums[start + j]
                      for j in range(len(r.choices))]
            picked.append(max(range(len(scores)), key=scores.__getitem__))
            start += len(r.choices)
        return picked

    def predict(self, loaded: LoadedModel, spec: TaskSpec, inputs: Sequence[str]) -> list[str]:
        raise ValueError("a multiple-choice model answers rows with choices; use evaluate, or a generation task")

    def evaluate(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any], metric: str,
                 hardware: HardwareProfile, confidence: float = 0.95) -> Measurement:
        from weightflow.shared.stats import mean_interval

        if not rows:
            raise ValueError("evaluation needs at least one row")

        def run(batch: Sequence[ChoiceRow]) -> list[int]:
            return self.choose(loaded, spec, batch)

        picked, seconds = timed(run, list(rows), loaded.device)
        latencies = request_latencies_ms(run, list(rows), loaded.device, LATENCY_SAMPLES)
        correct = [float(p == r.label) for p, r in zip(picked, rows, strict=True)]
        interval, std = mean_interval(correct, confidence)
        samples = sample_rows(rows, [r.input for r in rows], [r.choices[p] for p, r in zip(picked, rows, strict=True)],
                              [r.choices[r.label] for r in rows], correct, latencies)
        return measurement(score=sum(correct) / len(rows), metric=metric, n=len(rows), interval=interval,
                           score_std=std, binary=True, latencies_ms=latencies, seconds=seconds, hardware=hardware,
                           extra={"accuracy": sum(correct) / len(rows)}, samples=samples)

    def training_loss(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> torch.Tensor:
        prompts = [self.prompt(loaded, spec, r.input) for r in rows]
        return self.target_loss(loaded, prompts, [f" {r.choices[r.label]}" for r in rows])


tasks.register(MultipleChoice.name, MultipleChoice())
