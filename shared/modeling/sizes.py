"""Size classes: requirements speak of sizes, and selection tries the smallest class first."""

from __future__ import annotations

# "api": hosted models of unknown size, tried after every local class unless a candidate says otherwise
SIZE_CLASS_ORDER = ("xs", "s", "m", "l", "xl", "api")
_BOUNDS = ((20_000_000, "xs"), (60_000_000, "s"), (400_000_000, "m"), (3_000_000_000, "l"))


def size_class(params: int) -> str:
    """Bucket a parameter count: xs < 20M ≤ s < 60M ≤ m < 400M ≤ l < 3B ≤ xl."""
    if params < 0:
        raise ValueError(f"a parameter count cannot be negative: {params}")
    for bound, label in _BOUNDS:
        if params < bound:
            return label
    return "xl"
