"""Confidence intervals and significance for scores measured on a finite slice (scipy, no torch).

A canary of 120 rows cannot tell 0.838 from 0.85: judging it by its point estimate fails good models
and sends the workflow round in circles. Scores therefore carry an interval for their slice size —
Wilson for 0/1 scores (accuracy), a bootstrap for anything else — and a drop from a baseline counts
only when a test says it is unlikely to be noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from weightflow.contracts.measurement import Comparison, Interval, Measurement

BOOTSTRAP_RESAMPLES = 2000
_RESAMPLE_ELEMENTS = 1 << 21  # row indices drawn at once in a paired bootstrap (16 MiB)
PairedTest = Literal["mcnemar", "paired_bootstrap"]


def _scipy_stats() -> Any:
    """scipy.stats on first use: importing it costs about a second, which every CLI command that only
    validates a requirements file (and every service start) would otherwise pay."""
    from scipy import stats

    return stats


def wilson(correct: int, n: int, confidence: float = 0.95) -> Interval:
    if n <= 0:
        raise ValueError("an interval needs at least one row")
    if not 0 <= correct <= n:
        raise ValueError(f"{correct} correct out of {n} rows is impossible")
    ci = _scipy_stats().binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(low=float(ci.low), high=float(ci.high), confidence=confidence, method="wilson")


def bootstrap(samples: Sequence[Any], statistic: Callable[..., float], confidence: float = 0.95,
              seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[Interval, float]:
    """(interval, standard error) of `statistic` over rows, resampling rows together (scipy's bootstrap,
    percentile method: BCa's jackknife would cost n extra evaluations). `samples` are parallel columns,
    e.g. (truth, prediction) for macro-F1; a statistic that cannot vary gets a zero-width interval."""
    columns = [np.asarray(c) for c in samples]
    point = float(statistic(*columns))
    if columns[0].size < 2:
        return Interval(low=point, high=point, confidence=confidence, method="bootstrap"), 0.0
    result = _scipy_stats().bootstrap(tuple(columns), statistic, paired=True, vectorized=False, n_resamples=resamples,
                             confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval.low, result.confidence_interval.high
    if not (np.isfinite(low) and np.isfinite(high)):
        low = high = point
    return (Interval(low=float(min(low, point)), high=float(max(high, point)), confidence=confidence,
                     method="bootstrap"), float(np.nan_to_num(result.standard_error)))


def mean_interval(per_row: Sequence[float], confidence: float = 0.95) -> tuple[Interval, float]:
    """Wilson for 0/1 rows, else a bootstrap of the mean; with the per-row standard deviation."""
    values = np.asarray(per_row, dtype=float)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    if np.isin(values, (0.0, 1.0)).all():
        return wilson(int(values.sum()), int(values.size), confidence), std
    interval, _ = bootstrap((values,), np.mean, confidence)
    return interval, std


def drop_p_value(baseline: Measurement, current: Measurement) -> float:
    """One-sided p-value that the current score is truly below the baseline's.

    0/1 scores: Fisher's exact test on the 2x2 table of right/wrong counts. Other scores: Welch's t-test
    from the means, per-row standard deviations and sizes.
    """
    if current.score >= baseline.score:
        return 1.0
    if baseline.binary and current.binary:
        table = [[baseline.correct, baseline.n - baseline.correct], [current.correct, current.n - current.correct]]
        return float(_scipy_stats().fisher_exact(table, alternative="greater").pvalue)
    if baseline.score_std is None or current.score_std is None:
        return 0.0  # no spread recorded: the drop cannot be called noise
    result = _scipy_stats().ttest_ind_from_stats(baseline.score, baseline.score_std, baseline.n, current.score,
                                        current.score_std, current.n, equal_var=False, alternative="greater")
    return float(result.pvalue)


def half_width_at(p: float, n: int, confidence: float = 0.95) -> float:
    """Half the Wilson interval's width for a score of `p` on `n` rows (for sizing a canary set)."""
    ci = wilson(round(p * n), n, confidence)
    return (ci.high - ci.low) / 2


def paired(baseline: Sequence[float], candidate: Sequence[float], confidence: float = 0.95, *, seed: int = 0,
           resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, Interval, PairedTest, float, int, int]:
    """(difference, its interval, method, two-sided p, wins, losses) of candidate minus baseline on the same
    rows, in order. McNemar's exact test when every row scores 0 or 1 (a binomial test on the rows where the
    two disagree: the agreeing rows say nothing about which is better), else a paired bootstrap of the mean
    difference, whose p is twice the share of resampled differences on the far side of zero. The interval is
    the paired bootstrap's percentile interval either way (resampling rows keeps each row's two scores
    together, which is what makes the comparison paired)."""
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(candidate, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a paired comparison needs the same rows on both sides ({a.size} vs {b.size})")
    diff = b - a
    point = float(diff.mean())
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    rng = np.random.default_rng(seed)
    # resampled a block at a time: (resamples x rows) indices at once would be 320 MiB at 10,000 rows
    block = max(1, _RESAMPLE_ELEMENTS // diff.size)
    means = np.concatenate([diff[rng.integers(0, diff.size, size=(min(block, resamples - done), diff.size))]
                            .mean(axis=1) for done in range(0, resamples, block)])
    alpha = 1 - confidence
    low, high = (float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    interval = Interval(low=min(low, point), high=max(high, point), confidence=confidence, method="bootstrap")
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    if binary:
        p = 1.0 if wins + losses == 0 else float(_scipy_stats().binomtest(wins, wins + losses, 0.5).pvalue)
        return point, interval, "mcnemar", p, wins, losses
    if not diff.any():
        return point, interval, "paired_bootstrap", 1.0, wins, losses
    # the bootstrap distribution shifted to zero: how often is a difference as far from zero as this one?
    p = _bootstrap_p(means, point, resamples)
    return point, interval, "paired_bootstrap", p, wins, losses


def _bootstrap_p(draws: Any, point: float, resamples: int) -> float:
    """Two-sided p of a paired bootstrap: the draws shifted to zero, how often is one as far from zero as the
    difference measured (plus one draw, so p is never 0)."""
    return float(min(1.0, (np.abs(draws - point) >= abs(point)).mean() + 1 / resamples))


def _finding(p: float, difference: float, confidence: float) -> Literal["better", "worse", "no_difference"]:
    return "no_difference" if p >= 1 - confidence else "better" if difference > 0 else "worse"


def compare_rows(baseline: Sequence[tuple[str, float]], candidate: Sequence[tuple[str, float]], *,
                 baseline_name: str, candidate_name: str, confidence: float = 0.95) -> Comparison | None:
    """Two evaluations' (row id, row score) pairs compared on the rows both answered; None when they share
    none (different sets, or a log from before sample logs were kept)."""
    base = dict(baseline)
    common = [(base[i], score) for i, score in candidate if i in base]
    if not common:
        return None
    a, b = [x for x, _ in common], [y for _, y in common]
    difference, interval, method, p, wins, losses = paired(a, b, confidence)
    return Comparison(baseline=baseline_name, candidate=candidate_name, n=len(common),
                      baseline_score=float(np.mean(a)), candidate_score=float(np.mean(b)), difference=difference,
                      interval=interval, method=method, p_value=p, wins=wins, losses=losses,
                      finding=_finding(p, difference, confidence))


def paired_statistic(baseline: Any, candidate: Any, statistic: Callable[[Any], float], *, baseline_name: str,
                     candidate_name: str, confidence: float = 0.95, seed: int = 0,
                     resamples: int = 1000) -> Comparison | None:
    """A score that is a statistic of all rows (Spearman over pairs, log-likelihood per token over texts),
    compared on the same rows: the rows are resampled together (one index draw for both models) and the
    difference of the statistic recomputed each time. A draw whose statistic is undefined (a constant
    resample has no rank correlation) is left out; None when either score itself is undefined (nothing to
    compare, and a NaN would not survive the event's JSON)."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    if a.shape[0] != b.shape[0] or a.shape[0] == 0:
        raise ValueError(f"a paired comparison needs the same rows on both sides ({a.shape[0]} vs {b.shape[0]})")
    before, after = float(statistic(a)), float(statistic(b))
    point = after - before
    if not np.isfinite(point):
        return None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        index = rng.integers(0, a.shape[0], size=a.shape[0])
        draws.append(float(statistic(b[index])) - float(statistic(a[index])))
    diffs = np.asarray(draws)
    diffs = diffs[np.isfinite(diffs)]
    alpha = 1 - confidence
    if diffs.size == 0:
        low = high = point
        p = 1.0
    else:
        low, high = (float(v) for v in np.quantile(diffs, [alpha / 2, 1 - alpha / 2]))
        p = 1.0 if point == 0 else _bootstrap_p(diffs, point, resamples)
    return Comparison(baseline=baseline_name, candidate=candidate_name, n=int(a.shape[0]), baseline_score=before,
                      candidate_score=after, difference=point,
                      interval=Interval(low=min(low, point), high=max(high, point), confidence=confidence,
                                        method="bootstrap"),
                      method="paired_bootstrap", p_value=p, wins=None, losses=None,
                      finding=_finding(p, point, confidence))
