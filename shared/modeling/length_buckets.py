"""Length-bucketed batching: texts of similar length share a batch, so a batch pads to little more than itself.

A batch is padded to its longest text, and an encoder's work grows with the padded length: batches cut in
arrival order pay for their longest member on every row. Sorted by token length first, each batch's rows are
close in length and the padding mostly disappears (bench §1 reports how much). Results come back in the
caller's order. Sorting is stable, so the batches are a pure function of the lengths: a rerun batches alike.
Torch-free: a batch's work is the caller's `run`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Item indices in batches of `batch_size`, shortest first (stable: equal lengths keep their order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens the model sees when each batch pads to its longest item (the work batching costs)."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)


def in_arrival_order(count: int, batch_size: int) -> list[list[int]]:
    """The batches of unsorted batching, to compare `padded_tokens` against."""
    return [list(range(i, min(i + batch_size, count))) for i in range(0, count, batch_size)]


def run_bucketed(items: Sequence[T], lengths: Sequence[int], batch_size: int,
                 run: Callable[[list[T]], Sequence[R]]) -> list[R]:
    """`run` over length buckets of `items`, one result per item, in the items' order."""
    if len(lengths) != len(items):
        raise ValueError(f"{len(lengths)} lengths for {len(items)} items")
    out: list[R | None] = [None] * len(items)
    for batch in length_buckets(lengths, batch_size):
        results = run([items[i] for i in batch])
        if len(results) != len(batch):
            raise ValueError(f"a batch of {len(batch)} gave {len(results)} results")
        for i, result in zip(batch, results, strict=True):
            out[i] = result
    return out  # type: ignore[return-value]  # every slot filled: the buckets cover every index once
