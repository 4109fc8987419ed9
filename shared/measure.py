"""Turn an evaluation into the Measurement every stage judges: score, latency, cost per 1k tasks.

Cost is what the target hardware costs while serving the tasks at the measured batched throughput;
one formula, used by benchmark, fitting, tuning and the canary, so their numbers compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from contracts.benchmark import Measurement
from contracts.requirements import HardwareProfile, Requirements
from shared.modeling.datasets import Example
from shared.modeling.encoder import Encoder
from shared.modeling.evaluation import evaluate_classification


def cost_per_1k(throughput_per_s: float, hardware: HardwareProfile) -> float:
    if throughput_per_s <= 0:
        return float("inf")
    return 1000.0 / throughput_per_s * hardware.cost_per_hour_usd / 3600.0


def measure(encoder: Encoder, examples: Sequence[Example], labels: Mapping[str, str],
            hardware: HardwareProfile) -> Measurement:
    result = evaluate_classification(encoder, examples, labels)
    return Measurement(
        score=result.accuracy, latency_ms_p50=result.latency_ms_p50, latency_ms_p95=result.latency_ms_p95,
        cost_per_1k_usd=cost_per_1k(result.throughput_per_s, hardware),
        throughput_per_s=result.throughput_per_s, n=result.n,
    )


def judge(m: Measurement, req: Requirements) -> tuple[bool, list[str], float]:
    """(passed, every requirement missed with its numbers, quality gap) — a candidate passes only if it clears all."""
    failures: list[str] = []
    gap = max(0.0, req.quality.threshold - m.score)
    if gap > 0:
        failures.append(f"quality {m.score:.3f} < threshold {req.quality.threshold:.3f}")
    if m.latency_ms_p95 > req.latency.p95_ms:
        failures.append(f"latency p95 {m.latency_ms_p95:.1f} ms > {req.latency.p95_ms:g} ms")
    if m.cost_per_1k_usd > req.cost.per_1k_tasks_usd:
        failures.append(f"cost ${m.cost_per_1k_usd:.4f}/1k > ${req.cost.per_1k_tasks_usd:g}/1k")
    return not failures, failures, gap
