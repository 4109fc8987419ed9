"""Load a data split from the artifact store by digest, verified, into typed rows."""

from __future__ import annotations

from shared.artifacts import ArtifactStore
from shared.modeling.datasets import Example, Pair, load_jsonl


def examples(store: ArtifactStore, digest: str) -> list[Example]:
    return load_jsonl(store.open_verified(digest), Example)


def pairs(store: ArtifactStore, digest: str) -> list[Pair]:
    return load_jsonl(store.open_verified(digest), Pair)


def load_split(store: ArtifactStore, split: str, digest: str) -> list[Example] | list[Pair]:
    return pairs(store, digest) if split == "general" else examples(store, digest)
