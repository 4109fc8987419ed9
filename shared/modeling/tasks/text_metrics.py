"""Scores for generated text against its targets, one number in [0, 1] per row.

Normalisation for `exact_match` and `contains` (documented in the README): lower-case, drop the
articles a/an/the, drop punctuation, collapse whitespace — the SQuAD convention, so "The Paris." matches
"paris". `regex` searches the raw output with each target as a pattern. `chrf` is sacrebleu's chrF
(character n-gram F-score) divided by 100; for several targets, the best one counts.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
MAX_PATTERN = 500


def normalise(text: str) -> str:
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(output: str, targets: Sequence[str]) -> float:
    got = normalise(output)
    return float(any(got == normalise(t) for t in targets))


def contains(output: str, targets: Sequence[str]) -> float:
    got = f" {normalise(output)} "
    return float(any(f" {normalise(t)} " in got for t in targets if normalise(t)))


def regex(output: str, targets: Sequence[str]) -> float:
    return float(any(re.search(t[:MAX_PATTERN], output) for t in targets))


def chrf(output: str, targets: Sequence[str]) -> float:
    from sacrebleu.metrics.chrf import CHRF

    metric = CHRF()
    return float(max(metric.sentence_score(output, [t]).score for t in targets)) / 100.0


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "exact_match": exact_match, "contains": contains, "regex": regex, "chrf": chrf,
}
BINARY = frozenset({"exact_match", "contains", "regex"})


def check_patterns(targets: Sequence[str]) -> str | None:
    for t in targets:
        try:
            re.compile(t)
        except re.error as exc:
            return f"target {t[:60]!r} is not a regular expression: {exc}"
    return None
