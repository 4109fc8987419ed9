"""Pure decision logic of the stages: selection and its reroute decision tree, memory budget, fitting's
routing, the tuning gate, the canary's statistics, loop-back rules and rollback history. No broker, no
weights: these run in milliseconds."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest

from weightflow.contracts.benchmark import FitPlan
from weightflow.contracts.measurement import Interval, Measurement
from weightflow.contracts.monitoring import CanaryFailed, DeployedModel
from weightflow.contracts.requirements import DataRefs, Exclusion, RunContext
from weightflow.contracts.requirements_doc import parse_requirements
from weightflow.contracts.verdict import Miss, Verdict, judge
from weightflow.services.benchmark.domain import Result, class_order, decide_class, recommend
from weightflow.services.fitting.domain import Fail, Next, SchemeInfo, next_stage, scheme_order
from weightflow.services.monitoring.domain import judge_canary
from weightflow.services.registry.domain import Refused, Target, last_good, promotable, rollback_target
from weightflow.services.requirements import routing
from weightflow.services.tuning.domain import gate
from weightflow.shared.modeling.budget import MB, Architecture, activation_bytes, kv_cache_bytes, memory_budget
from weightflow.shared.stats import drop_p_value, wilson

REQ = parse_requirements((Path(__file__).resolve().parents[2] / "examples/support-tickets/requirements.yaml")
                         .read_text())
T = REQ.quality.threshold
DATA = DataRefs(eval="e" * 64, canary="c" * 64, train="t" * 64, general="g" * 64)


def m(score: float, p95: float = 10.0, cost: float = 0.001, n: int = 100) -> Measurement:
    return Measurement(score=score, latency_ms_p50=p95 / 2, latency_ms_p95=p95, cost_per_1k_usd=cost,
                       throughput_per_s=100, n=n, interval=wilson(round(score * n), n))


def context(*exclusions: Exclusion, req: object = REQ) -> RunContext:
    return RunContext(requirements=req, version=1, data=DATA, requirements_digest="d" * 64,  # type: ignore[arg-type]
                      attempt=len(exclusions), exclusions=list(exclusions))


def excluded(candidate: str, variant: str = "int8", adapter: str | None = None, gap: float = 0.02) -> Exclusion:
    return Exclusion(manifest_id=uuid4().hex, candidate=candidate, variant=variant, adapter_digest=adapter,
                     kind="quality", reasons=["canary"], canary_gap=gap)


# -- selection ---------------------------------------------------------------------------------


def test_size_classes_are_tried_smallest_first() -> None:
    assert class_order(["m", "xs", "s", "s"]) == ["xs", "s", "m"]


def test_select_best_passing_candidate() -> None:
    results = [Result("a", "s", 1, m(T + 0.01)), Result("b", "s", 1, m(T + 0.05)), Result("c", "s", 1, m(T - 0.3))]
    choice = decide_class(results, context(), "s")
    assert choice.result is not None and choice.result.candidate == "b" and choice.decision.action == "select"


def test_near_miss_on_quality_only_is_selected_for_tuning() -> None:
    choice = decide_class([Result("a", "s", 1, m(T - 0.02))], context(), "s")
    assert choice.result is not None and choice.decision.action == "tune" and "0.020" in choice.decision.reason


def test_latency_miss_is_not_tunable_and_sizes_up() -> None:
    choice = decide_class([Result("a", "xs", 1, m(T - 0.02, p95=REQ.latency.p95_ms * 2))], context(), "xs")
    assert choice.result is None and choice.decision.action == "size_up" and "latency" in choice.decision.reason


def test_recommendation_names_the_smallest_relaxation() -> None:
    results = [Result("slow", "s", 1, m(T + 0.1, p95=REQ.latency.p95_ms * 1.1)),
               Result("weak", "xs", 1, m(T - 0.3))]
    decision = recommend(results, REQ)
    assert decision.action == "relax" and "slow" in decision.reason and "latency.p95_ms" in decision.reason


# -- the reroute decision tree ----------------------------------------------------------------


def test_reroute_takes_the_next_candidate_of_the_same_class() -> None:
    results = [Result("a", "s", 1, m(T + 0.05)), Result("b", "s", 1, m(T + 0.02))]
    choice = decide_class(results, context(excluded("a")), "s")
    assert choice.result is not None and choice.result.candidate == "b" and choice.plan == FitPlan()


def test_reroute_then_tries_a_variant_not_tried_yet() -> None:
    results = [Result("a", "s", 1, m(T + 0.05))]
    choice = decide_class(results, context(excluded("a", "int8")), "s")
    assert choice.decision.action == "next_variant" and choice.plan.skip_variants == ["int8"]
    # ... but only one predicted to fit the hardware
    no_room = decide_class(results, context(excluded("a", "int8")), "s", fits=lambda r, v: v == "int8")
    assert no_room.decision.action == "tune" and no_room.plan.tune and no_room.plan.canary_gap == 0.02


def test_reroute_then_tunes_when_the_canary_gap_is_tunable() -> None:
    results = [Result("a", "s", 1, m(T + 0.05))]
    both = context(excluded("a", "int8"), excluded("a", "fp32"))
    choice = decide_class(results, both, "s")
    assert choice.result is not None and choice.decision.action == "tune" and choice.plan.tune
    too_far = decide_class(results, context(excluded("a", "int8", gap=0.5), excluded("a", "fp32", gap=0.5)), "s")
    assert too_far.result is None and too_far.decision.action == "size_up" and "excluded" in too_far.decision.reason
    tuned_already = context(excluded("a", "int8"), excluded("a", "fp32"), excluded("a", "int8", adapter="f" * 64))
    assert decide_class(results, tuned_already, "s").result is None


def test_reroute_sizes_up_when_the_class_is_exhausted() -> None:
    small = [Result("a", "s", 1, m(T + 0.05))]
    large = [Result("big", "m", 2, m(T + 0.02))]
    exhausted = context(excluded("a", "int8"), excluded("a", "fp32"), excluded("a", "int8", adapter="f" * 64))
    assert decide_class(small, exhausted, "s").result is None
    choice = decide_class(large, exhausted, "m")
    assert choice.result is not None and choice.result.candidate == "big"


def test_exclusions_are_per_combination() -> None:
    ctx = context(excluded("a", "int8"), excluded("a", "int8", adapter="f" * 64))
    assert ctx.excluded("a") and ctx.excluded("a", "int8") and not ctx.excluded("a", "fp32")
    assert ctx.excluded("a", "int8", adapter=True) and ctx.excluded("a", "int8", adapter=False)
    assert not context(excluded("a", "int8", adapter="f" * 64)).excluded("a", "int8", adapter=False)


# -- memory budget and fitting ----------------------------------------------------------------


def test_memory_budget_formula() -> None:
    arch = Architecture(hidden=384, layers=6, heads=12, intermediate=1536, is_decoder=False)
    b = memory_budget("fp32", 22_713_216, arch, 96 * MB, overhead=0.3)
    assert b.weight_bytes == 22_713_216 * 4
    assert b.total_bytes == int(b.weight_bytes * 1.3) + activation_bytes(arch)
    assert not b.fits
    q = memory_budget("int8", 22_713_216, arch, 96 * MB, weight_bytes=23_500_000)
    assert q.fits and q.bytes_per_param == pytest.approx(23_500_000 / 22_713_216, abs=1e-4)
    assert memory_budget("int8", 22_713_216, arch, 96 * MB, bytes_per_param=1.0).weight_bytes == 22_713_216
    with pytest.raises(ValueError, match="bytes per parameter"):  # an unknown scheme is never taken for fp32
        memory_budget("int4", 22_713_216, arch, 96 * MB)


def test_the_runtime_term_is_calibrated_per_device_and_counts_the_tokenizer() -> None:
    """On CPU the peak child measured 18 MB beside the model plus ~9x the tokenizer.json (RESULTS §15); on CUDA the
    allocator's peak sees no host memory. An unknown device kind is budgeted as a CPU."""
    from weightflow.shared.modeling.budget import calibration, runtime_bytes, tokenizer_bytes

    assert runtime_bytes("cpu", 0) == 18 * MB
    assert runtime_bytes("cpu", 3_522_871) == int(18 * MB + 9 * 3_522_871)  # SmolLM2's tokenizer.json
    assert runtime_bytes("cuda:1", 3_522_871) == 0 and calibration("cuda:1").weight_overhead == 0.2
    assert calibration("cpu").weight_overhead == 0.0 and calibration("npu") == calibration("cpu")
    assert tokenizer_bytes({"tokenizer.json": 10, "vocab.txt": 5}) == 10, "a fast tokenizer loads tokenizer.json"
    assert tokenizer_bytes({"vocab.json": 5, "merges.txt": 3, "spiece.model": 2, "config.json": 99}) == 10


def test_a_scheme_working_memory_is_counted_with_the_activations() -> None:
    from weightflow.shared.modeling.quantizers.int8 import PREFILL_BLOCK_ELEMENTS, Int8WeightOnly

    arch = Architecture.from_config({"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                                     "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                                     "architectures": ["LlamaForCausalLM"]})
    working = Int8WeightOnly().working_bytes(arch, 8, 264)
    assert working == 4 * (2 * min(PREFILL_BLOCK_ELEMENTS, 576 * 1536) + 8 * 264 * 1536)
    plain = memory_budget("int8", 134_515_008, arch, 512 * MB, weight_bytes=164_000_000, seq=264)
    more = memory_budget("int8", 134_515_008, arch, 512 * MB, weight_bytes=164_000_000, seq=264,
                         working_bytes=working)
    assert more.activation_bytes - plain.activation_bytes == working
    assert more.total_bytes - plain.total_bytes == working


def test_decoder_budget_counts_the_kv_cache() -> None:
    arch = Architecture.from_config({"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16,
                                     "architectures": ["LlamaForCausalLM"]})
    assert arch.is_decoder and arch.kv_heads == 16 and arch.head_dim == 128
    assert kv_cache_bytes(arch, batch=1, seq=4096, bytes_per_value=2) == 2 * 16 * 2048 * 4096 * 2
    gqa = Architecture.from_config({"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                                    "num_key_value_heads": 3, "vocab_size": 49152,
                                    "architectures": ["LlamaForCausalLM"]})  # SmolLM2-135M's shape
    kv = kv_cache_bytes(gqa, batch=8, seq=288)
    assert kv == 2 * 30 * 3 * 64 * 288 * 8 * 4
    assert activation_bytes(gqa, batch=8, seq=288) > kv + 8 * 49152 * 4, "plus working set and logits"


def test_quantizers_predict_what_they_will_store() -> None:
    """SmolLM2-135M: its tied 49152 x 576 embedding stays fp32 in 4-bit; weightflow's int8 stores it twice."""
    from weightflow.shared.modeling.registry import quantizers

    arch = Architecture.from_config({"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                                     "vocab_size": 49152, "tie_word_embeddings": True,
                                     "architectures": ["LlamaForCausalLM"]})
    params, embedding = 134_515_008, 49152 * 576
    four_bit = quantizers.get("w4a16").predict_weight_bytes(params, arch)
    assert four_bit == int(embedding * 4 + (params - embedding) * (0.5 + 2 / 64))
    assert 160e6 < four_bit < 180e6, "what the bench measured on disk: 173 MB"
    assert quantizers.get("int8").predict_weight_bytes(params, arch) == params + embedding


def test_schemes_are_tried_by_expected_loss_among_those_that_fit() -> None:
    infos = [SchemeInfo("w4a16", 0.5, 0.03, None, True), SchemeInfo("int8", 1.0, 0.005, None, True),
             SchemeInfo("awq", 0.5, 0.02, None, True), SchemeInfo("int8-tiny", 1.0, 0.0, None, False)]
    assert [i.scheme for i in scheme_order(infos)] == ["int8", "awq", "w4a16", "int8-tiny"]


def test_fitting_decides_once_where_the_model_goes() -> None:
    ctx = context()
    assert next_stage(0.0, ctx, FitPlan()) == Next("registry", "no quality gap: register as is")
    tune = next_stage(0.02, ctx, FitPlan())
    assert isinstance(tune, Next) and tune.stage == "tuning"
    far = next_stage(REQ.quality.tunable_gap + 0.01, ctx, FitPlan())
    assert isinstance(far, Fail) and "exceeds the tunable gap" in far.reason
    forced = next_stage(0.0, ctx, FitPlan(tune=True, canary_gap=0.01))
    assert isinstance(forced, Next) and forced.stage == "tuning"
    no_data = context(req=REQ.model_copy(update={"quality": REQ.quality.model_copy(update={"tunable_gap": 0.1})}))
    no_data = no_data.model_copy(update={"data": DATA.model_copy(update={"train": None})})
    assert isinstance(next_stage(0.02, no_data, FitPlan()), Fail)


# -- tuning gate ------------------------------------------------------------------------------


def test_gate_needs_task_and_general() -> None:
    assert gate(REQ, m(T + 0.01), general_before=0.8, general_after=0.79).passed
    forgot = gate(REQ, m(T + 0.01), general_before=0.8, general_after=0.8 - REQ.quality.max_general_drop - 0.01)
    assert forgot.kinds() == {"general"} and "catastrophic forgetting" in forgot.messages()[0]
    assert gate(REQ, m(T - 0.01), general_before=0.8, general_after=0.8).kinds() == {"quality"}


def test_verdict_is_typed() -> None:
    v = judge(m(T - 0.1, p95=REQ.latency.p95_ms + 1), REQ)
    assert v.kinds() == {"quality", "latency"} and not v.only("quality") and v.of("latency") is not None
    assert judge(m(T - 0.1), REQ).only("quality")
    assert Verdict(misses=[Miss(kind="cost", observed=1, limit=0.5)]).messages() == ["cost $1.0000/1k > $0.5/1k"]


# -- canary statistics ------------------------------------------------------------------------


def test_wilson_interval_matches_known_values() -> None:
    # Reference values: Wilson score interval, 95 % (e.g. Newcombe 1998, table I; R's prop.test without cc).
    ci = wilson(81, 263)
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.2553, 0.3662)
    ci = wilson(0, 10)
    assert ci.low == pytest.approx(0.0, abs=1e-9) and round(ci.high, 4) == 0.2775
    ci = wilson(15, 148)
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.0624, 0.1605)


def test_drop_significance() -> None:
    assert drop_p_value(m(0.9, n=120), m(0.6, n=120)) < 0.001
    assert drop_p_value(m(0.865, n=120), m(0.838, n=120)) > 0.2
    assert drop_p_value(m(0.8, n=120), m(0.85, n=120)) == 1.0


def test_canary_fails_on_quality_only_when_the_interval_says_so() -> None:
    """The case the issue saw: eval 0.865, canary 0.838 on 120 rows, threshold 0.85: not a failure."""
    req = REQ.model_copy(update={"quality": REQ.quality.model_copy(update={"threshold": 0.85})})
    base = m(0.838, n=120)
    assert judge_canary(m(0.838, n=120), req, base).passed
    bad = judge_canary(m(0.70, n=120), req, base)
    assert not bad.passed and bad.kind == "quality" and {d.kind for d in bad.drifts} == {"quality"}
    upper = bad.verdict.misses[0]
    assert upper.observed == pytest.approx(wilson(84, 120).high) and "upper bound" in upper.detail


def test_canary_drift_and_ceilings() -> None:
    base = m(T + 0.05, p95=10, cost=0.001)
    assert judge_canary(m(T + 0.05, p95=11), REQ, base).passed
    slow = judge_canary(m(T + 0.05, p95=10 * (2 + REQ.monitoring.latency_increase_pct / 100)), REQ, base)
    assert slow.passed and [d.kind for d in slow.drifts] == ["latency"]  # drift alerts, ceiling not crossed
    over = judge_canary(m(T + 0.05, p95=REQ.latency.p95_ms + 1), REQ, base)
    assert not over.passed and over.kind == "latency"
    unknown_interval = Measurement(score=T - 0.01, latency_ms_p50=1, latency_ms_p95=1, cost_per_1k_usd=0.001,
                                   throughput_per_s=1, n=10_000, interval=Interval(low=T - 0.02, high=T - 0.005,
                                                                                   method="wilson"))
    assert not judge_canary(unknown_interval, REQ, None).passed


def test_an_http_canary_is_compared_with_an_http_baseline_only() -> None:
    """Through `weightflow serve` a canary pays for HTTP, which an in-process baseline did not: only the
    ceilings judge its speed then; an API deployment's baseline is HTTP too, so drift applies."""
    base = m(T + 0.05, p95=10, cost=0.001)
    over_http = m(T + 0.05, p95=40, cost=0.01).model_copy(update={"via": "http"})
    assert judge_canary(over_http, REQ, base).drifts == [] and judge_canary(over_http, REQ, base).passed
    http_base = base.model_copy(update={"via": "http"})
    assert {d.kind for d in judge_canary(over_http, REQ, http_base).drifts} == {"latency", "cost"}


def test_an_unreachable_endpoint_is_its_own_failure_and_routes_nowhere() -> None:
    from weightflow.services.monitoring.domain import unreachable_failure

    judged = unreachable_failure("unreachable: ticket-router at http://h/v1 did not answer after 3 tries")
    assert not judged.passed and judged.kind == "unreachable" and judged.drifts == []
    event = failed(kind="unreachable")
    decision = routing.on_canary_failure(event, live_version=1, reroutes=0, max_reroutes=3, halted=False,
                                         in_flight=None, exclusions=[])
    assert isinstance(decision, routing.Ignore) and "outage" in decision.reason


# -- loop-back rules --------------------------------------------------------------------------


def failed(manifest_run: str | None = None, version: int = 1, kind: str = "quality") -> CanaryFailed:
    measurement = m(T - 0.1)
    return CanaryFailed(run_id=uuid4(), deployment="d", manifest_id=uuid4().hex,
                        manifest_run_id=manifest_run or uuid4(),
                        model=DeployedModel(candidate="a", variant="int8", requirements_version=version),
                        kind=kind, verdict=Verdict(misses=[Miss(kind="quality", observed=T - 0.05, limit=T)]),
                        measurement=measurement)


def test_a_failed_canary_reroutes_with_what_failed_excluded() -> None:
    event = failed()
    decision = routing.on_canary_failure(event, live_version=1, reroutes=0, max_reroutes=3, halted=False,
                                         in_flight=None, exclusions=[])
    assert isinstance(decision, routing.Reroute) and decision.attempt == 1
    (ex,) = decision.exclusions
    assert (ex.candidate, ex.variant, ex.manifest_id) == ("a", "int8", event.manifest_id)
    assert ex.canary_gap == pytest.approx(0.1)


def test_the_loop_is_bounded_and_single_flight() -> None:
    in_flight = str(uuid4())
    other = routing.on_canary_failure(failed(), live_version=1, reroutes=1, max_reroutes=3, halted=False,
                                      in_flight=in_flight, exclusions=[])
    assert isinstance(other, routing.Ignore) and "in flight" in other.reason
    own = routing.on_canary_failure(failed(manifest_run=in_flight), live_version=1, reroutes=1, max_reroutes=3,  # type: ignore[arg-type]
                                    halted=False, in_flight=in_flight, exclusions=[])
    assert isinstance(own, routing.Reroute) and own.attempt == 2
    spent = routing.on_canary_failure(failed(), live_version=1, reroutes=3, max_reroutes=3, halted=False,
                                      in_flight=None, exclusions=[])
    assert isinstance(spent, routing.Halt)
    assert isinstance(routing.on_canary_failure(failed(), live_version=1, reroutes=0, max_reroutes=3, halted=True,
                                                in_flight=None, exclusions=[]), routing.Ignore)
    stale = routing.on_canary_failure(failed(version=1), live_version=2, reroutes=0, max_reroutes=3, halted=False,
                                      in_flight=None, exclusions=[])
    assert isinstance(stale, routing.Ignore) and "v2 is current" in stale.reason


def test_halt_advice_names_what_to_relax_or_check() -> None:
    advice = routing.advice(REQ, [excluded("a", gap=0.04)], [])
    assert any("data.canary" in a and "quality.threshold" in a for a in advice)


# -- registry: promotion and rollback history -------------------------------------------------


def test_promotion_never_goes_back_to_older_requirements() -> None:
    assert promotable(2, 1, 2) is None and promotable(1, None, 0) is None
    assert "v3 is newer" in (promotable(2, 2, 3) or "")
    assert promotable(1, 2, 2) is not None


def test_rollback_walks_history_and_stays_in_its_deployment() -> None:
    releases = ["m1", "m2", "m3", "m4"]
    owners = {"m1": "dep-a", "m2": "dep-a", "m3": "dep-a", "m4": "dep-a", "x": "dep-b", "unpromoted": "dep-a"}
    position = 3
    for expected in ("m3", "m2", "m1"):
        target = rollback_target("dep-a", releases, position, None, owners.get)
        assert isinstance(target, Target) and target.manifest_id == expected
        position = target.position
    assert isinstance(rollback_target("dep-a", releases, position, None, owners.get), Refused)
    assert rollback_target("dep-a", releases, 0, "m4", owners.get) == Target("m4", 3)
    for to, why in (("x", "belongs to deployment 'dep-b'"), ("nope", "not registered"), ("m1", "already live"),
                    ("unpromoted", "never promoted")):
        refused = rollback_target("dep-a", releases, 0, to, owners.get)
        assert isinstance(refused, Refused) and why in refused.reason, (to, refused)
    assert isinstance(rollback_target("dep-a", [], -1, None, owners.get), Refused)


def test_automatic_rollback_goes_to_the_newest_good_release() -> None:
    releases = ["m1", "m2", "m3"]
    good = {"m1", "m2"}
    assert last_good(releases, 2, good.__contains__) == Target("m2", 1)
    assert last_good(releases, 2, {"m1"}.__contains__) == Target("m1", 0)
    assert last_good(releases, 2, set().__contains__) is None
