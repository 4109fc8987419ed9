"""What every task measures the same way: a measurement from scores, latencies and throughput, cost, the
sample log. Torch-free (the timing of local model work is `timing`'s, on the runtime side).

Quality and speed are measured together, on the same device and data, because selection trades one
against the other; latency is per single request (what a client waits for), throughput batched (what
the hardware bill pays for).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from weightflow.contracts.measurement import Interval, Measurement, SampleRow
from weightflow.contracts.requirements import HardwareProfile

if TYPE_CHECKING:
    from weightflow.shared.modeling.remote import Call, Caller

LATENCY_SAMPLES = 32


def cost_per_1k(throughput_per_s: float, hardware: HardwareProfile) -> float:
    """What the target hardware costs while serving 1000 tasks at the measured batched throughput."""
    if throughput_per_s <= 0:
        return float("inf")
    return 1000.0 / throughput_per_s * hardware.cost_per_hour_usd / 3600.0


def sample_rows(rows: Sequence[Any], inputs: Sequence[str], predictions: Sequence[str], targets: Sequence[str],
                scores: Sequence[float], latencies_ms: Sequence[float] = ()) -> list[SampleRow]:
    """One sample-log row per evaluated row, in order. Latency is known for the rows timed one request at a
    time: the first `len(latencies_ms)` (every row over HTTP, the first few locally)."""
    return [SampleRow.of(str(getattr(row, "id", i)), text, predicted, target, score,
                         float(latencies_ms[i]) if i < len(latencies_ms) else None)
            for i, (row, text, predicted, target, score)
            in enumerate(zip(rows, inputs, predictions, targets, scores, strict=True))]


def measurement(*, score: float, metric: str, n: int, interval: Interval, score_std: float, binary: bool,
                latencies_ms: Sequence[float], seconds: float, hardware: HardwareProfile,
                extra: dict[str, float] | None = None, cost_per_1k_usd: float | None = None,
                via: Literal["process", "http"] = "process", samples: Sequence[SampleRow] | None = None
                ) -> Measurement:
    """`cost_per_1k_usd`: when given (an API's token prices), instead of the hardware's bill; `samples`: the
    evaluated rows, held for shared.sample_logs.keep to store."""
    import numpy as np

    throughput = n / seconds if seconds > 0 else float("inf")
    cost = cost_per_1k(throughput, hardware) if cost_per_1k_usd is None else cost_per_1k_usd
    m = Measurement(
        score=score, metric=metric, n=n, interval=interval, score_std=score_std, binary=binary,
        latency_ms_p50=float(np.percentile(latencies_ms, 50)), latency_ms_p95=float(np.percentile(latencies_ms, 95)),
        throughput_per_s=throughput, cost_per_1k_usd=cost, extra=extra or {}, via=via)
    return m if samples is None else m.with_rows(samples)


def remote_measurement(caller: Caller, calls: Sequence[Call], seconds: float, *, score: float, metric: str,
                       interval: Interval, score_std: float, binary: bool, hardware: HardwareProfile,
                       extra: dict[str, float], samples: Sequence[SampleRow] | None = None) -> Measurement:
    """A measurement over HTTP, one call per row: latency as the client waited (retries included),
    cost from token usage at the endpoint's prices (a self-hosted endpoint: its hardware's bill)."""
    n = len(calls)
    prices = caller.endpoint.prices
    cost = None if prices is None else 1000.0 * sum(prices.of(c.prompt_tokens, c.completion_tokens)
                                                   for c in calls) / n
    extra = {**extra, **caller.http_extra(),
             "prompt_tokens_per_task": sum(c.prompt_tokens for c in calls) / n,
             "completion_tokens_per_task": sum(c.completion_tokens for c in calls) / n}
    return measurement(score=score, metric=metric, n=n, interval=interval, score_std=score_std, binary=binary,
                       latencies_ms=[c.latency_ms for c in calls], seconds=seconds, hardware=hardware, extra=extra,
                       cost_per_1k_usd=cost, via="http", samples=samples)
