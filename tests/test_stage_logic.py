"""Pure decision logic of the stages: selection, memory budget, tuning gate, canary judgement."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.benchmark import Measurement
from services.benchmark.domain import Result, class_order, decide_class, recommend
from services.fitting.domain import MB, Architecture, activation_bytes, memory_budget
from services.monitoring.domain import judge_canary
from services.requirements.domain import parse_requirements
from services.tuning.domain import gate, should_tune

REQ = parse_requirements((Path(__file__).resolve().parents[1] / "examples/support-tickets/requirements.yaml")
                         .read_text())
T = REQ.quality.threshold


def m(score: float, p95: float = 10.0, cost: float = 0.001) -> Measurement:
    return Measurement(score=score, latency_ms_p50=p95 / 2, latency_ms_p95=p95, cost_per_1k_usd=cost,
                       throughput_per_s=100, n=100)


def test_size_classes_are_tried_smallest_first() -> None:
    assert class_order(["m", "xs", "s", "s"]) == ["xs", "s", "m"]


def test_select_best_passing_candidate() -> None:
    results = [Result("a", "s", 1, m(T + 0.01)), Result("b", "s", 1, m(T + 0.05)), Result("c", "s", 1, m(T - 0.3))]
    chosen, decision = decide_class(results, REQ, "s")
    assert chosen is not None and chosen.candidate == "b" and decision.action == "select"


def test_near_miss_on_quality_only_is_selected_for_tuning() -> None:
    chosen, decision = decide_class([Result("a", "s", 1, m(T - 0.02))], REQ, "s")
    assert chosen is not None and decision.action == "tune" and "0.020" in decision.reason


def test_latency_miss_is_not_tunable_and_sizes_up() -> None:
    chosen, decision = decide_class([Result("a", "xs", 1, m(T - 0.02, p95=REQ.latency.p95_ms * 2))], REQ, "xs")
    assert chosen is None and decision.action == "size_up" and "latency" in decision.reason


def test_recommendation_names_the_smallest_relaxation() -> None:
    results = [Result("slow", "s", 1, m(T + 0.1, p95=REQ.latency.p95_ms * 1.1)),
               Result("weak", "xs", 1, m(T - 0.3))]
    decision = recommend(results, REQ)
    assert decision.action == "relax" and "slow" in decision.reason and "latency.p95_ms" in decision.reason


def test_memory_budget_formula() -> None:
    arch = Architecture(hidden=384, layers=6, heads=12, intermediate=1536, is_decoder=False)
    b = memory_budget("fp32", 22_713_216, arch, 96 * MB, overhead=0.3)
    assert b.weight_bytes == 22_713_216 * 4
    assert b.total_bytes == int(b.weight_bytes * 1.3) + activation_bytes(arch)
    assert not b.fits
    q = memory_budget("int8", 22_713_216, arch, 96 * MB, weight_bytes=23_500_000)
    assert q.fits and q.bytes_per_param == pytest.approx(23_500_000 / 22_713_216, abs=1e-4)


def test_decoder_budget_counts_the_kv_cache() -> None:
    arch = Architecture.from_config({"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16,
                                     "architectures": ["LlamaForCausalLM"]})
    assert arch.is_decoder
    assert activation_bytes(arch, batch=1, seq=4096, bytes_per_value=2) == 2 * 16 * 2048 * 4096 * 2


def test_tuning_only_for_a_tunable_gap() -> None:
    assert not should_tune(0.0, REQ, True).tune
    far = should_tune(REQ.quality.tunable_gap + 0.01, REQ, True)
    assert not far.tune and far.terminal
    assert should_tune(0.01, REQ, True).tune
    assert should_tune(0.01, REQ, False).terminal


def test_gate_needs_task_and_general() -> None:
    assert gate(REQ, task_score=T + 0.01, general_before=0.8, general_after=0.79) == []
    forgot = gate(REQ, task_score=T + 0.01, general_before=0.8, general_after=0.8 - REQ.quality.max_general_drop - 0.01)
    assert len(forgot) == 1 and "catastrophic forgetting" in forgot[0]
    assert any("task score" in r for r in gate(REQ, task_score=T - 0.01, general_before=0.8, general_after=0.8))


def test_canary_judgement() -> None:
    base = m(T + 0.05, p95=10, cost=0.001)
    assert judge_canary(m(T + 0.05, p95=11), REQ, base).passed
    quality = judge_canary(m(T + 0.05 - REQ.monitoring.quality_drop - 0.01), REQ, base)
    assert not quality.passed and [d.kind for d in quality.drifts] == ["quality"]
    slow = judge_canary(m(T + 0.05, p95=10 * (2 + REQ.monitoring.latency_increase_pct / 100)), REQ, base)
    assert slow.passed and [d.kind for d in slow.drifts] == ["latency"]  # drift alerts, ceiling not crossed
    assert not judge_canary(m(T - 0.01), REQ, None).passed
