"""Confidence intervals and significance for scores measured on a finite slice (scipy, no torch).

A canary of 120 rows cannot tell 0.838 from 0.85: judging it by its point estimate fails good models
and sends the workflow round in circles. Scores therefore carry an interval for their slice size —
Wilson for 0/1 scores (accuracy), a bootstrap for anything else — and a drop from a baseline counts
only when a test says it is unlikely to be noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from contracts.measurement import Interval, Measurement

BOOTSTRAP_RESAMPLES = 2000


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
