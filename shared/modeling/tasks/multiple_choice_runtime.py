"""`multiple-choice`'s model work: every (prompt, choice) pair scored by log-likelihood in shared forward
passes, the evaluation pass, and the loss on the right choice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.tasks.base import measurement, sample_rows
from weightflow.shared.modeling.tasks.language_runtime import LanguageRuntime
from weightflow.shared.modeling.tasks.multiple_choice import LATENCY_SAMPLES, ChoiceRow, MultipleChoice
from weightflow.shared.modeling.tasks.timing import request_latencies_ms, timed
from weightflow.shared.stats import mean_interval


class MultipleChoiceRuntime(LanguageRuntime):
    task: MultipleChoice

    def choose(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[ChoiceRow]) -> list[int]:
        """The chosen index per row; every (prompt, choice) pair of several rows goes in one forward pass."""
        pairs = [(self.prompt(loaded, spec, r.input), f" {c}") for r in rows for c in r.choices]
        sums: list[float] = []
        counts: list[int] = []
        for i in range(0, len(pairs), self.task.batch_size):
            chunk = pairs[i: i + self.task.batch_size]
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
