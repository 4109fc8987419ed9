"""The classification tasks' model work: label scores and embeddings in length-bucketed batches, served
classifications and embeddings, the evaluation pass, and the general pass (Spearman on sentence pairs).

Subclasses say how a model scores labels for texts and how it embeds text; the metrics are the spec's
(`classification.ClassificationTask.score`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.shared.modeling.length_buckets import run_bucketed
from weightflow.shared.modeling.protocols import Classified, Embedded, GeneralOutputs, LoadedModel, TaskRuntime
from weightflow.shared.modeling.tasks.base import measurement
from weightflow.shared.modeling.tasks.classification import (
    ClassificationTask,
    label_names,
    labelled_samples,
    spearman_of_columns,
)
from weightflow.shared.modeling.tasks.timing import request_latencies_ms, timed

R = TypeVar("R")


class ClassificationRuntime(TaskRuntime):
    task: ClassificationTask

    # -- what subclasses provide ------------------------------------------------------------
    @abstractmethod
    def label_scores(self, loaded: LoadedModel, spec: TaskSpec, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), len(spec.labels)] scores in task-label order; no gradients needed."""

    @abstractmethod
    def embed(self, loaded: LoadedModel, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), d] L2-normalised sentence embeddings (for the general-ability set)."""

    def inputs(self, loaded: LoadedModel, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = loaded.tokenizer(list(texts), padding=True, truncation=True, max_length=self.task.max_length,
                                 return_tensors="pt")
        return {key: value.to(loaded.device) for key, value in batch.items()}

    def token_counts(self, loaded: LoadedModel, texts: Sequence[str]) -> list[int]:
        """Each text's tokens as the model sees it (truncated): what a batch pads to, and what serving counts."""
        ids = loaded.tokenizer(list(texts), truncation=True, max_length=self.task.max_length)["input_ids"]
        return [len(i) for i in ids]

    def bucketed(self, loaded: LoadedModel, texts: Sequence[str], run: Callable[[list[str]], Sequence[R]]) -> list[R]:
        """`run` over batches of similar-length texts (shared.modeling.length_buckets), results in the texts' order,
        under `torch.inference_mode`. What fits one batch (a served batch, a timed single request) runs as it is:
        there is nothing to sort, and counting its tokens first would be time measured for nothing."""
        with torch.inference_mode():
            if len(texts) <= self.task.batch_size:
                return list(run(list(texts)))
            return run_bucketed(list(texts), self.token_counts(loaded, texts), self.task.batch_size, run)

    # -- serving ----------------------------------------------------------------------------
    def classify(self, loaded: LoadedModel, spec: TaskSpec, texts: Sequence[str]) -> list[Classified]:
        """Each text's label (as `predict` picks it) and every label's probability."""
        names = label_names(spec)

        def run(chunk: list[str]) -> list[Classified]:
            scores = self.label_scores(loaded, spec, chunk).float() / self.task.score_temperature
            probs = torch.softmax(scores, dim=1).cpu()
            return [Classified(label=names[int(row.argmax())],
                               scores={n: float(p) for n, p in zip(names, row, strict=True)}, tokens=tokens)
                    for row, tokens in zip(probs, self.token_counts(loaded, chunk), strict=True)]

        return self.bucketed(loaded, texts, run)

    def embeddings(self, loaded: LoadedModel, spec: TaskSpec, texts: Sequence[str]) -> list[Embedded]:
        def run(chunk: list[str]) -> list[Embedded]:
            vectors = self.embed(loaded, chunk).float().cpu().tolist()
            return [Embedded(v, n) for v, n in zip(vectors, self.token_counts(loaded, chunk), strict=True)]

        return self.bucketed(loaded, texts, run)

    # -- shared behaviour -------------------------------------------------------------------
    def predict(self, loaded: LoadedModel, spec: TaskSpec, inputs: Sequence[str]) -> list[str]:
        names = label_names(spec)

        def run(chunk: list[str]) -> list[str]:
            return [names[int(j)] for j in self.label_scores(loaded, spec, chunk).argmax(dim=1)]

        return self.bucketed(loaded, inputs, run)

    def evaluate(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any], metric: str,
                 hardware: HardwareProfile, confidence: float = 0.95) -> Measurement:
        names = self.task.check_labels(spec, rows)
        texts = [r.text for r in rows]

        def run(batch: Sequence[str]) -> list[str]:
            return self.predict(loaded, spec, batch)

        predicted, seconds = timed(run, texts, loaded.device)
        latencies = request_latencies_ms(run, texts, loaded.device)
        score, interval, std, binary, extra = self.task.score(names, rows, predicted, metric, confidence)
        return measurement(score=score, metric=metric, n=len(rows), interval=interval, score_std=std,
                           binary=binary, latencies_ms=latencies, seconds=seconds, hardware=hardware, extra=extra,
                           samples=labelled_samples(rows, predicted, latencies))

    def general_score(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> float:
        """Spearman between embedding cosine and gold similarity on sentence pairs."""
        return self.general_outputs(loaded, spec, rows).score

    def general_outputs(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> GeneralOutputs:
        """(cosine, gold similarity) per pair; the score is their Spearman correlation."""
        if len(rows) < 2:
            raise ValueError("the general-ability set needs at least two pairs")

        def run(chunk: list[str]) -> list[torch.Tensor]:
            return list(self.embed(loaded, chunk).cpu())

        a = torch.stack(self.bucketed(loaded, [p.a for p in rows], run))
        b = torch.stack(self.bucketed(loaded, [p.b for p in rows], run))
        cosine = (a * b).sum(dim=1).numpy().astype(float)
        return GeneralOutputs(np.column_stack([cosine, [float(p.score) for p in rows]]), spearman_of_columns)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)
