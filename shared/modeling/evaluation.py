"""Scoring an encoder on the team's task (zero-shot routing) and on a general-ability set.

Quality and speed are measured together, on the same device and data, because selection trades
one against the other; latency is per single request since that is what a ticket router serves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel
from scipy.stats import spearmanr

from shared.modeling.datasets import Example, Pair
from shared.modeling.encoder import Encoder


class ClassificationResult(BaseModel):
    accuracy: float
    n: int
    per_label_accuracy: dict[str, float]
    latency_ms_p50: float
    latency_ms_p95: float
    throughput_per_s: float
    seconds: float


class SimilarityResult(BaseModel):
    spearman: float
    n: int


class _Prototypes:
    """Label description embeddings, computed once and reused for every request."""

    def __init__(self, encoder: Encoder, labels: Mapping[str, str]) -> None:
        if len(labels) < 2:
            raise ValueError("zero-shot classification needs at least two labels")
        self.names = list(labels)
        self.vectors = encoder.embed([labels[name] for name in self.names])

    def predict(self, embeddings: torch.Tensor) -> list[str]:
        best = (embeddings @ self.vectors.T).argmax(dim=1)
        return [self.names[int(i)] for i in best]


def _sync(encoder: Encoder) -> None:
    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)


def classify(
    encoder: Encoder, texts: Sequence[str], labels: Mapping[str, str], batch_size: int = 32
) -> list[str]:
    """The label whose description is most cosine-similar to each text."""
    prototypes = _Prototypes(encoder, labels)
    return prototypes.predict(encoder.embed(texts, batch_size=batch_size))


def evaluate_classification(
    encoder: Encoder,
    examples: Sequence[Example],
    labels: Mapping[str, str],
    *,
    batch_size: int = 32,
    latency_samples: int = 32,
) -> ClassificationResult:
    """Accuracy (batched) plus single-request latency percentiles and batched throughput."""
    if not examples:
        raise ValueError("evaluate_classification needs at least one example")
    unknown = sorted({ex.label for ex in examples} - set(labels))
    if unknown:
        raise ValueError(f"examples use labels that have no description: {unknown}; known: {sorted(labels)}")
    prototypes = _Prototypes(encoder, labels)
    texts = [ex.text for ex in examples]

    _sync(encoder)
    start = time.perf_counter()
    predicted = prototypes.predict(encoder.embed(texts, batch_size=batch_size))
    _sync(encoder)
    seconds = time.perf_counter() - start

    hits: dict[str, list[bool]] = {}
    for ex, guess in zip(examples, predicted, strict=True):
        hits.setdefault(ex.label, []).append(ex.label == guess)
    correct = sum(sum(v) for v in hits.values())

    latencies = _request_latencies_ms(encoder, prototypes, texts[: max(1, latency_samples)])
    return ClassificationResult(
        accuracy=correct / len(examples),
        n=len(examples),
        per_label_accuracy={label: sum(v) / len(v) for label, v in sorted(hits.items())},
        latency_ms_p50=float(np.percentile(latencies, 50)),
        latency_ms_p95=float(np.percentile(latencies, 95)),
        throughput_per_s=len(examples) / seconds,
        seconds=seconds,
    )


def _request_latencies_ms(encoder: Encoder, prototypes: _Prototypes, texts: Sequence[str]) -> list[float]:
    for text in texts[:2]:  # warm-up: first calls pay for allocator growth and kernel selection
        prototypes.predict(encoder.embed([text]))
    _sync(encoder)
    latencies = []
    for text in texts:
        start = time.perf_counter()
        prototypes.predict(encoder.embed([text]))
        _sync(encoder)
        latencies.append((time.perf_counter() - start) * 1000.0)
    return latencies


def evaluate_similarity(encoder: Encoder, pairs: Sequence[Pair], batch_size: int = 32) -> SimilarityResult:
    """Spearman correlation between embedding cosine and the gold similarity score."""
    if len(pairs) < 2:
        raise ValueError("evaluate_similarity needs at least two pairs")
    a = encoder.embed([p.a for p in pairs], batch_size=batch_size)
    b = encoder.embed([p.b for p in pairs], batch_size=batch_size)
    cosine = (a * b).sum(dim=1).numpy()
    gold = np.array([p.score for p in pairs])
    rho = spearmanr(cosine, gold).statistic
    return SimilarityResult(spearman=float(rho), n=len(pairs))
