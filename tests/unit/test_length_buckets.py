"""Length buckets: every item once, in batches of similar length, results back in the caller's order."""

from __future__ import annotations

import random

import pytest

from weightflow.shared.modeling.length_buckets import in_arrival_order, length_buckets, padded_tokens, run_bucketed


def test_buckets_cover_every_item_once_shortest_first_and_stable() -> None:
    lengths = [5, 3, 9, 3, 1, 7, 5]
    batches = length_buckets(lengths, 3)
    assert batches == [[4, 1, 3], [0, 6, 5], [2]]  # equal lengths keep their order: a rerun batches alike
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_results_come_back_in_order_and_padding_shrinks() -> None:
    rng = random.Random(7)
    texts = [" ".join("w" * rng.randint(1, 60)) for _ in range(200)]
    lengths = [len(t) for t in texts]
    seen: list[int] = []

    def run(chunk: list[str]) -> list[int]:
        seen.append(max(len(t) for t in chunk) - min(len(t) for t in chunk))
        return [len(t) for t in chunk]

    assert run_bucketed(texts, lengths, 16, run) == lengths
    bucketed = padded_tokens(lengths, length_buckets(lengths, 16))
    arrival = padded_tokens(lengths, in_arrival_order(len(texts), 16))
    assert sum(lengths) <= bucketed < 0.7 * arrival
    assert max(seen) < 60  # no batch spans the whole range of lengths


def test_a_run_that_loses_results_or_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="gave 1 results"):
        run_bucketed(["a", "b"], [1, 1], 2, lambda chunk: chunk[:1])
    with pytest.raises(ValueError, match="2 lengths for 3 items"):
        run_bucketed(["a", "b", "c"], [1, 1], 2, lambda chunk: chunk)
    with pytest.raises(ValueError, match="at least 1"):
        length_buckets([1], 0)
    assert run_bucketed([], [], 4, lambda chunk: chunk) == []
