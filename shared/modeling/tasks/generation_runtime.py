"""`generation`'s model work: greedy batched generation with left padding, the evaluation pass (latency per
request, time to first token, tokens per second), and the loss on the target answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.tasks.base import measurement
from weightflow.shared.modeling.tasks.generation import LATENCY_SAMPLES, Generation, GenerationRow, answer_samples
from weightflow.shared.modeling.tasks.language import first_line
from weightflow.shared.modeling.tasks.language_runtime import LanguageRuntime
from weightflow.shared.modeling.tasks.timing import request_latencies_ms, timed


class GenerationRuntime(LanguageRuntime):
    task: Generation

    def generate(self, loaded: LoadedModel, spec: TaskSpec, inputs: Sequence[str], max_new_tokens: int | None = None
                 ) -> tuple[list[str], int]:
        """(answers, tokens generated) for a batch, greedy."""
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
        for i in range(0, len(inputs), self.task.batch_size):
            out += self.generate(loaded, spec, inputs[i: i + self.task.batch_size])[0]
        return out

    def evaluate(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any], metric: str,
                 hardware: HardwareProfile, confidence: float = 0.95) -> Measurement:
        if not rows:
            raise ValueError("evaluation needs at least one row")
        produced = [0]

        def run(batch: Sequence[GenerationRow]) -> list[str]:
            answers: list[str] = []
            for i in range(0, len(batch), self.task.batch_size):
                chunk, count = self.generate(loaded, spec, [r.input for r in batch[i: i + self.task.batch_size]])
                answers += chunk
                produced[0] += count
            return answers

        answers, seconds = timed(run, list(rows), loaded.device)
        tokens = produced[0]
        latencies = request_latencies_ms(run, list(rows), loaded.device, LATENCY_SAMPLES)

        def first_token(batch: Sequence[GenerationRow]) -> list[str]:
            return self.generate(loaded, spec, [r.input for r in batch], max_new_tokens=1)[0]

        ttft = request_latencies_ms(first_token, list(rows), loaded.device, LATENCY_SAMPLES)
        score, interval, std, binary, extra = self.task.score(answers, rows, metric, confidence)
        extra |= {"ttft_ms_p50": float(np.percentile(ttft, 50)), "tokens_per_s": tokens / seconds if seconds else 0.0,
                  "tokens_per_task": tokens / len(rows)}
        return measurement(score=score, metric=metric, n=len(rows), interval=interval, score_std=std, binary=binary,
                           latencies_ms=latencies, seconds=seconds, hardware=hardware, extra=extra,
                           samples=answer_samples(rows, answers, metric, latencies))

    def training_loss(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> torch.Tensor:
        prompts = [self.prompt(loaded, spec, r.input) for r in rows]
        return self.target_loss(loaded, prompts, [f" {r.all_targets[0]}" if not spec.chat_template else
                                                  r.all_targets[0] for r in rows])
