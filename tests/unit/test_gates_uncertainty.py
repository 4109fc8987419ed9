"""Every gate judged with its uncertainty (#23 part 2): pass / miss / inconclusive from the score's interval,
`quality.decide_on`, how many rows would settle an inconclusive call, and paired comparisons on the same rows.
Pure logic and a real artifact store; no broker, no weights."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from weightflow.contracts.measurement import Measurement, SampleRow
from weightflow.contracts.requirements import Requirements
from weightflow.contracts.requirements_doc import parse_requirements
from weightflow.contracts.verdict import Verdict, call_quality, judge, quality_gap, rows_to_settle
from weightflow.services.benchmark.domain import Result, decide_class
from weightflow.services.monitoring.domain import judge_canary
from weightflow.services.tuning.domain import gate
from weightflow.shared import sample_logs
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.comparisons import compare
from weightflow.shared.stats import bootstrap, compare_rows, paired, paired_statistic, wilson

from .test_stage_logic import DATA, REQ, context

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/support-tickets/requirements.yaml"


def strict(**quality: object) -> Requirements:
    return REQ.model_copy(update={"quality": REQ.quality.model_copy(update=quality)})


def measured(correct: int, n: int, confidence: float = 0.95) -> Measurement:
    return Measurement(score=correct / n, latency_ms_p50=5, latency_ms_p95=10, cost_per_1k_usd=0.001,
                       throughput_per_s=100, n=n, interval=wilson(correct, n, confidence))


# -- the quality call ---------------------------------------------------------------------------


def test_a_score_is_a_pass_a_miss_or_inconclusive_by_its_interval() -> None:
    req = strict(threshold=0.85)
    clear = call_quality(measured(190, 200), req)  # 0.95 [0.91, 0.97]
    below = call_quality(measured(140, 200), req)  # 0.70 [0.63, 0.76]
    unsure = call_quality(measured(173, 200), req)  # 0.865 [0.81, 0.90]: the issue's own example
    assert (clear.outcome, below.outcome, unsure.outcome) == ("pass", "miss", "inconclusive")
    assert clear.rows_to_settle is None and below.rows_to_settle is None
    assert unsure.low < 0.85 < unsure.high and unsure.n == 200 and unsure.passed  # decided on the estimate
    assert "inconclusive" in unsure.describe() and f"({unsure.rows_to_settle - 200:,} more) would settle it" in (  # type: ignore[operator]
        unsure.describe())


@pytest.mark.parametrize(("correct", "n", "threshold"), [(173, 200, 0.85), (810, 1000, 0.80), (52, 100, 0.55),
                                                         (3010, 4000, 0.76), (47, 60, 0.70), (97, 100, 0.95),
                                                         (99, 100, 0.97), (3, 100, 0.05)])
def test_the_rows_that_would_settle_it_do(correct: int, n: int, threshold: float) -> None:
    """At the suggested size (the score held) the interval no longer straddles the threshold; at 80 % of it,
    it still does: the estimate is close, not just large."""
    score = correct / n
    ci = wilson(correct, n)
    assert ci.low < threshold < ci.high
    call = call_quality(measured(correct, n), strict(threshold=threshold))
    needed = call.rows_to_settle
    assert call.outcome == "inconclusive" and needed is not None and needed > n

    def straddles(rows: int) -> bool:
        at = wilson(round(score * rows), rows)
        return at.low < threshold < at.high

    assert not straddles(round(needed * 1.1))
    assert straddles(round(needed * 0.8))


def test_a_score_on_the_threshold_is_never_settled_by_rows() -> None:
    assert rows_to_settle(0.8, 0.75, 0.85, 200, 0.8) is None
    assert "no number of rows" in call_quality(measured(160, 200), strict(threshold=0.8)).describe()


def test_decide_on_lower_bound_makes_an_inconclusive_pass_a_miss() -> None:
    m = measured(173, 200)  # 0.865 [0.81, 0.90] against 0.85
    lenient, hard = judge(m, strict(threshold=0.85)), judge(m, strict(threshold=0.85, decide_on="lower_bound"))
    assert lenient.passed and lenient.quality is not None and lenient.quality.outcome == "inconclusive"
    assert not hard.passed and hard.quality is not None and not hard.quality.passed
    (miss,) = hard.misses
    assert miss.kind == "quality" and miss.observed == pytest.approx(m.interval.low)  # type: ignore[union-attr]
    said = miss.message()
    assert "lower bound" in said and "inconclusive" in said and "more) would settle" in said
    # the gap the gate decides on is the lower bound's
    assert quality_gap(m, strict(threshold=0.85)) == 0
    assert quality_gap(m, strict(threshold=0.85, decide_on="lower_bound")) == pytest.approx(0.85 - m.interval.low)  # type: ignore[union-attr]
    # a clear pass passes either way; a clear miss misses either way
    assert judge(measured(195, 200), strict(threshold=0.85, decide_on="lower_bound")).passed
    assert not judge(measured(120, 200), strict(threshold=0.85)).passed


def test_a_miss_under_the_estimate_says_when_it_was_inconclusive() -> None:
    verdict = judge(measured(165, 200), strict(threshold=0.85))  # 0.825 [0.77, 0.87]: below, but not clearly
    (miss,) = verdict.misses
    assert verdict.quality is not None and verdict.quality.outcome == "inconclusive" and not verdict.quality.passed
    assert miss.observed == 0.825 and "inconclusive" in miss.message()


def test_selection_under_a_strict_bar_tunes_what_it_cannot_prove() -> None:
    req = strict(threshold=0.85, tunable_gap=0.10)
    results = [Result("a", "s", 1, measured(173, 200))]
    assert decide_class(results, context(req=req), "s").decision.action == "select"
    hard = strict(threshold=0.85, tunable_gap=0.10, decide_on="lower_bound")
    choice = decide_class(results, context(req=hard), "s")
    assert choice.decision.action == "tune" and choice.result is not None


def test_the_tuning_gate_and_the_canary_carry_their_quality_call() -> None:
    tuned = gate(strict(threshold=0.85), measured(173, 200), general_before=0.8, general_after=0.8)
    assert tuned.passed and tuned.quality is not None and tuned.quality.outcome == "inconclusive"
    # the canary fails a live model only on a clear miss: inconclusive passes, and says so
    canary = judge_canary(measured(100, 120), strict(threshold=0.85), None)  # 0.833 [0.76, 0.89]
    assert canary.passed and canary.verdict.quality is not None
    assert (canary.verdict.quality.outcome, canary.verdict.quality.decided_on) == ("inconclusive", "upper_bound")
    failed = judge_canary(measured(80, 120), strict(threshold=0.85), None)
    assert not failed.passed and failed.verdict.quality is not None and failed.verdict.quality.outcome == "miss"


def test_verdicts_from_an_earlier_release_still_read() -> None:
    old = Verdict.model_validate({"misses": [{"kind": "quality", "observed": 0.7, "limit": 0.8, "detail": "x"}]})
    assert old.quality is None and old.messages() == ["x 0.700 < threshold 0.800"]


def test_decide_on_and_confidence_are_checked_in_the_document() -> None:
    text = EXAMPLE.read_text()
    assert parse_requirements(text).quality.decide_on == "estimate"
    assert parse_requirements(text.replace("decide_on: estimate", "decide_on: lower_bound")
                              ).quality.decide_on == "lower_bound"
    with pytest.raises((ValidationError, ValueError), match="decide_on"):
        parse_requirements(text.replace("decide_on: estimate", "decide_on: upper_bound"))
    with pytest.raises((ValidationError, ValueError), match="confidence"):
        parse_requirements(text.replace("confidence: 0.95", "confidence: 1.5"))


# -- paired comparisons -------------------------------------------------------------------------


def test_mcnemar_is_the_exact_binomial_test_on_the_rows_the_two_disagree_on() -> None:
    rng = random.Random(3)
    base = [float(rng.random() < 0.7) for _ in range(300)]
    better = [1.0 if b == 0 and rng.random() < 0.3 else b for b in base]  # fixes ~27 wrong rows, breaks none
    difference, interval, method, p, wins, losses = paired(base, better)
    assert method == "mcnemar" and losses == 0 and wins > 0
    assert p == pytest.approx(stats.binomtest(wins, wins + losses, 0.5).pvalue)
    assert difference == pytest.approx(np.mean(better) - np.mean(base)) and interval.low > 0
    # the point of pairing: the two scores' own intervals overlap, the paired test still sees the difference
    a, b = wilson(int(sum(base)), 300), wilson(int(sum(better)), 300)
    assert a.high > b.low and p < 0.001


def test_the_same_answers_are_no_difference() -> None:
    rows = [("r1", 1.0), ("r2", 0.0), ("r3", 1.0)]
    c = compare_rows(rows, rows, baseline_name="a fp32", candidate_name="a int8")
    assert c is not None and c.finding == "no_difference" and c.p_value == 1.0 and c.difference == 0
    assert (c.wins, c.losses, c.n) == (0, 0, 3)


def test_rows_are_matched_by_id_whatever_their_order() -> None:
    base = [("a", 1.0), ("b", 0.0), ("c", 0.0), ("only-base", 1.0)]
    cand = [("c", 1.0), ("b", 1.0), ("a", 1.0), ("only-candidate", 0.0)]
    c = compare_rows(base, cand, baseline_name="x", candidate_name="y")
    assert c is not None and c.n == 3 and (c.wins, c.losses) == (2, 0)
    assert c.baseline_score == pytest.approx(1 / 3) and c.candidate_score == 1.0
    assert compare_rows(base, [("z", 1.0)], baseline_name="x", candidate_name="y") is None


def test_scores_that_are_not_zero_or_one_use_a_paired_bootstrap() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=400)
    worse = np.clip(base - rng.uniform(0.0, 0.05, size=400), 0, 1)  # every row a little lower
    difference, interval, method, p, _, losses = paired(base, worse)
    assert method == "paired_bootstrap" and difference < 0 and interval.high < 0 and p < 0.01 and losses > 300
    noise = np.clip(base + rng.normal(0, 0.05, size=400), 0, 1)
    *_, p_noise, _, _ = paired(base, noise)
    c = compare_rows([(str(i), x) for i, x in enumerate(base)], [(str(i), x) for i, x in enumerate(noise)],
                     baseline_name="x", candidate_name="y")
    assert c is not None and c.finding == "no_difference" and p_noise > 0.05
    # its interval agrees with a bootstrap of the row differences
    reference, _ = bootstrap((noise - base,), np.mean)
    assert c.interval.low == pytest.approx(reference.low, abs=0.005)
    assert c.interval.high == pytest.approx(reference.high, abs=0.005)


def test_uneven_sides_are_an_error_not_a_silent_zip() -> None:
    with pytest.raises(ValueError, match="same rows"):
        paired([1.0, 0.0], [1.0])


def test_a_statistic_of_all_rows_is_compared_by_resampling_the_same_rows() -> None:
    """The general set's score is a Spearman over pairs: no row has a score of its own, so the rows are drawn
    together for both models and the correlation recomputed."""
    from weightflow.shared.modeling.tasks.classification import spearman_of_columns

    rng = np.random.default_rng(1)
    gold = rng.uniform(0, 5, size=300)
    sharp = np.column_stack([gold + rng.normal(0, 0.5, 300), gold])
    blurred = np.column_stack([gold + rng.normal(0, 3.0, 300), gold])
    forgot = paired_statistic(sharp, blurred, spearman_of_columns, baseline_name="base", candidate_name="tuned")
    assert forgot is not None and forgot.finding == "worse" and forgot.difference < -0.2 and forgot.interval.high < 0
    assert forgot.method == "paired_bootstrap" and forgot.wins is None and "rows won" not in forgot.describe()
    assert forgot.baseline_score == pytest.approx(spearman_of_columns(sharp))
    same = paired_statistic(sharp, sharp, spearman_of_columns, baseline_name="base", candidate_name="tuned")
    assert same is not None and same.finding == "no_difference" and same.p_value == 1.0 and same.difference == 0
    # a pass whose statistic is undefined (every cosine the same) compares nothing, rather than carry a NaN
    flat = np.column_stack([np.ones(300), gold])
    assert paired_statistic(sharp, flat, spearman_of_columns, baseline_name="a", candidate_name="b") is None
    with pytest.raises(ValueError, match="same rows"):
        paired_statistic(sharp, sharp[:10], spearman_of_columns, baseline_name="a", candidate_name="b")


def test_a_task_that_overrides_its_general_score_is_taken_at_its_word() -> None:
    """A plugin task that inherits general_outputs but says its own general_score: its score, no rows."""
    from weightflow.shared.modeling.protocols import GeneralOutputs
    from weightflow.shared.modeling.tasks.zero_shot import ZeroShotClassification
    from weightflow.shared.modeling.tasks.zero_shot_runtime import ZeroShotRuntime

    class Own(ZeroShotRuntime):
        def general_score(self, loaded: object, spec: object, rows: object) -> float:  # type: ignore[override]
            return 0.42

    class Rows(ZeroShotRuntime):
        def general_outputs(self, loaded: object, spec: object, rows: object) -> GeneralOutputs:  # type: ignore[override]
            return GeneralOutputs(np.asarray([1.0, 0.0, 1.0]), lambda v: float(v.mean()))

    task = ZeroShotClassification()
    assert Own(task).general_pass(None, None, []) == (0.42, None)  # type: ignore[arg-type]
    score, outputs = Rows(task).general_pass(None, None, [])  # type: ignore[arg-type]
    assert outputs is not None and score == pytest.approx(2 / 3)


def test_a_strict_bar_refuses_an_adapter_that_cannot_show_it_lost_little() -> None:
    """On the lower bound, the general gate takes the largest drop the paired interval allows."""
    from weightflow.contracts.measurement import Comparison, Interval

    unsure = Comparison(baseline="m", candidate="m + lora", n=60, baseline_score=0.80, candidate_score=0.79,
                        difference=-0.01, interval=Interval(low=-0.09, high=0.06, method="bootstrap"),
                        method="paired_bootstrap", p_value=0.7, wins=None, losses=None, finding="no_difference")
    tuned = measured(195, 200)
    lenient = gate(strict(threshold=0.85), tuned, general_before=0.80, general_after=0.79, general=unsure)
    assert lenient.passed  # the drop itself, 0.01, is within the allowed 0.03
    hard = gate(strict(threshold=0.85, decide_on="lower_bound"), tuned, general_before=0.80, general_after=0.79,
                general=unsure)
    (miss,) = hard.misses
    assert miss.kind == "general" and miss.observed == pytest.approx(0.09)
    assert "upper bound of the drop" in miss.message()


def test_the_recovery_rule_judges_a_variants_loss_as_the_gates_do() -> None:
    from weightflow.contracts.measurement import Comparison, Interval
    from weightflow.services.fitting.domain import lost_too_much

    base, variant = measured(180, 200), measured(176, 200)  # 0.90 -> 0.88
    paired_loss = Comparison(baseline="m fp32", candidate="m int8", n=200, baseline_score=0.90, candidate_score=0.88,
                             difference=-0.02, interval=Interval(low=-0.045, high=0.0, method="bootstrap"),
                             method="mcnemar", p_value=0.06, wins=1, losses=5, finding="no_difference")
    def loss_rule(limit: float | None) -> Requirements:
        return REQ.model_copy(update={"quantization": REQ.quantization.model_copy(update={"max_quality_loss": limit})})

    rule = loss_rule(0.03)
    assert lost_too_much(loss_rule(None), base, measured(100, 200), paired_loss) is None  # no rule: threshold alone
    assert lost_too_much(rule, base, variant, paired_loss) is None  # 0.02 <= 0.03
    hard = rule.model_copy(update={"quality": rule.quality.model_copy(update={"decide_on": "lower_bound"})})
    said = lost_too_much(hard, base, variant, paired_loss)
    assert said is not None and "loss 0.045" in said and "far bound" in said and "m int8 vs m fp32" in said
    unpaired = lost_too_much(rule, base, measured(170, 200), None)
    assert unpaired is not None and "no sample logs to pair" in unpaired and "loss 0.050" in unpaired


def test_comparisons_read_the_stored_sample_logs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")

    def kept(scores: list[float]) -> Measurement:
        rows = [SampleRow.of(f"r{i}", f"text {i}", "x", "y", s) for i, s in enumerate(scores)]
        return sample_logs.keep(store, measured(int(sum(scores)), len(scores)).with_rows(rows))

    base, tuned = kept([1.0, 0.0, 0.0, 0.0] * 50), kept([1.0, 1.0, 1.0, 0.0] * 50)
    assert base.samples and tuned.samples and base.sample_rows is None  # stored, let go
    c = compare(store, base, tuned, baseline_name="m int8", candidate_name="m int8 + lora", confidence=0.95)
    assert c is not None and c.finding == "better" and c.method == "mcnemar" and c.n == 200
    assert c.difference == pytest.approx(0.5) and (c.wins, c.losses) == (100, 0)
    assert "m int8 + lora vs m int8: +0.500" in c.describe() and "better" in c.describe()
    # a measurement from before sample logs, or a log the store no longer has: no comparison, no crash
    older = base.model_copy(update={"samples": None})
    assert compare(store, older, tuned, baseline_name="a", candidate_name="b", confidence=0.95) is None
    gone = base.model_copy(update={"samples": "0" * 64})
    assert compare(store, gone, tuned, baseline_name="a", candidate_name="b", confidence=0.95) is None


def test_the_defaults_keep_deciding_on_the_estimate() -> None:
    assert DATA.eval and REQ.quality.confidence == 0.95 and REQ.quality.decide_on == "estimate"
