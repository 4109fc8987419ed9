"""Timing local model work: one batched pass, and single-request latencies after a warm-up, synchronised with the
device (a CUDA kernel returns before it finishes). The runtimes' side of `base`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from weightflow.shared.modeling.tasks.base import LATENCY_SAMPLES

T = TypeVar("T")
R = TypeVar("R")


def sync(device: Any) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[Sequence[T]], list[R]], inputs: Sequence[T], device: Any) -> tuple[list[R], float]:
    """Outputs of one batched pass over `inputs`, and its wall time in seconds."""
    sync(device)
    start = time.perf_counter()
    outputs = run(inputs)
    sync(device)
    return outputs, time.perf_counter() - start


def request_latencies_ms(run: Callable[[Sequence[T]], list[R]], inputs: Sequence[T], device: Any,
                         samples: int = LATENCY_SAMPLES) -> list[float]:
    """Single-request latencies over the first `samples` inputs, after a two-request warm-up."""
    chosen = list(inputs[: max(1, samples)])
    for item in chosen[:2]:  # first calls pay for allocator growth and kernel selection
        run([item])
    latencies = []
    for item in chosen:
        sync(device)
        start = time.perf_counter()
        run([item])
        sync(device)
        latencies.append((time.perf_counter() - start) * 1000.0)
    return latencies
