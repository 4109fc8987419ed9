"""What a model did on a data split: score with its confidence interval, latency, cost.

Every stage judges the same `Measurement`, so a number taken in benchmarking means the same thing in
fitting, tuning, registration and the canary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, PrivateAttr

from weightflow.contracts.base import Contract

SAMPLE_INPUT_CHARS = 500  # a sample log shows what was asked, not a whole document
SAMPLE_TEXT_CHARS = 1000


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SampleRow(Contract):
    """One evaluated row as a sample log keeps it: what the model was given, answered and should have answered.

    `score` is the row's own score (1/0 for accuracy-like metrics, the metric's value otherwise: a row
    with macro-F1 as the metric still scores 1 when its label is right); `latency_ms` is known for the
    rows timed one request at a time (the first few locally, every row over HTTP)."""

    id: str
    input: str = Field(description=f"the row's input, cut at {SAMPLE_INPUT_CHARS} characters")
    prediction: str = Field(description=f"the label, choice or generated answer, cut at {SAMPLE_TEXT_CHARS}")
    target: str = Field(description="what it should have been (several accepted answers joined by ' | ')")
    score: float
    latency_ms: float | None = None

    @classmethod
    def of(cls, id: str, input: str, prediction: str, target: str, score: float,
           latency_ms: float | None = None) -> SampleRow:
        """A row with its texts cut to the sample log's lengths."""
        return cls(id=id, input=clip(input, SAMPLE_INPUT_CHARS), prediction=clip(prediction, SAMPLE_TEXT_CHARS),
                   target=clip(target, SAMPLE_TEXT_CHARS), score=float(score), latency_ms=latency_ms)

    @property
    def wrong(self) -> bool:
        return self.score < 1.0


class Interval(Contract):
    """A confidence interval for the score on this many rows (Wilson for 0/1 scores, else bootstrap)."""

    low: float
    high: float
    confidence: float = 0.95
    method: Literal["wilson", "bootstrap", "none"]


class Measurement(Contract):
    score: float
    latency_ms_p50: float
    latency_ms_p95: float
    cost_per_1k_usd: float
    throughput_per_s: float
    n: int
    metric: str = "accuracy"
    score_std: float | None = Field(default=None, description="per-row standard deviation of the score")
    binary: bool = Field(default=True, description="each row scores 0 or 1 (accuracy-like)")
    interval: Interval | None = None
    via: Literal["process", "http"] = Field(
        default="process", description="the model called in the measuring process, or over HTTP as a client")
    extra: dict[str, float] = Field(default_factory=dict,
                                    description="other metrics: macro_f1, per-label precision/recall, …")
    samples: str | None = Field(
        default=None, description="sha256 of this evaluation's sample log in the artifact store: JSONL, one SampleRow "
                                  "per evaluated row (`weightflow samples RUN`); None where none was kept")
    # The rows as the task evaluated them, in memory only: shared.sample_logs.keep stores them and sets `samples`.
    _rows: list[SampleRow] | None = PrivateAttr(default=None)

    def with_rows(self, rows: Sequence[SampleRow]) -> Measurement:
        """This measurement holding its evaluated rows (never serialized) until they are stored."""
        copy = self.model_copy()
        copy._rows = list(rows)
        return copy

    @property
    def sample_rows(self) -> list[SampleRow] | None:
        return self._rows

    def kept_as(self, digest: str) -> Measurement:
        """This measurement naming its stored sample log, its rows let go (what an event carries)."""
        copy = self.model_copy(update={"samples": digest})
        copy._rows = None
        return copy

    @property
    def correct(self) -> int:
        """Rows scored 1, for 0/1 metrics."""
        return round(self.score * self.n)


class Comparison(Contract):
    """Two models on the same rows, paired row by row: is the candidate better, worse, or not measurably apart?

    On the eval set, scores are the sample logs' row scores (1/0 for classification and exact match, whatever the
    run's metric; the metric's own value per row otherwise): 0/1 rows are tested with McNemar's exact test on the
    rows where the two disagree, other rows with a paired bootstrap of the mean difference. On the general set the
    score is a statistic of all rows (a rank correlation, a per-token likelihood), so the rows are resampled
    together on both models and the statistic recomputed (a paired bootstrap). The interval is the paired
    bootstrap's either way."""

    baseline: str = Field(description="what the candidate is compared with, e.g. 'minilm-l6 fp32'")
    candidate: str = Field(description="e.g. 'minilm-l6 int8' or 'minilm-l6 int8 + LoRA'")
    n: int = Field(description="rows both answered (matched by row id)")
    baseline_score: float = Field(description="the baseline's score on those rows (mean row score, or the statistic)")
    candidate_score: float
    difference: float = Field(description="candidate minus baseline")
    interval: Interval = Field(description="of the difference: paired bootstrap over rows")
    method: Literal["mcnemar", "paired_bootstrap"]
    p_value: float = Field(description="two-sided, against 'no difference'")
    wins: int | None = Field(description="rows the candidate scored higher on; None where a row has no score of "
                                         "its own (a rank correlation)")
    losses: int | None = Field(description="rows the candidate scored lower on (None likewise)")
    finding: Literal["better", "worse", "no_difference"] = Field(
        description="better/worse when p < 1 - confidence, else no difference the rows can show")

    def describe(self) -> str:
        """`+0.184 [+0.150, +0.219] on 640 rows, better (McNemar p = 2.8e-33; 120 rows won, 2 lost)`."""
        test = "McNemar" if self.method == "mcnemar" else "paired bootstrap"
        finding = self.finding.replace("_", " ")
        rows = f"; {self.wins} rows won, {self.losses} lost" if self.wins is not None else ""
        return (f"{self.candidate} vs {self.baseline}: {self.difference:+.3f} [{self.interval.low:+.3f}, "
                f"{self.interval.high:+.3f}] on {self.n} rows, {finding} ({test} p = {self.p_value:.2g}{rows})")
