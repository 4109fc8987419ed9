"""`hf` candidates: a model already in the local Hugging Face cache. Never downloaded.

The cache is `$HF_HUB_CACHE` (default `~/.cache/huggingface/hub`); `org/name` lives under
`models--org--name/snapshots/<revision>/`, the revision named by `refs/main` (or the only snapshot).
Snapshot files are links into the cache's blobs: they are followed only while they stay in the cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from weightflow.contracts.requirements import CandidateRef, ResolvedCandidate
from weightflow.shared.artifacts import tree_entries
from weightflow.shared.modeling.checkpoint import inspect_checkpoint
from weightflow.shared.modeling.protocols import CandidateSource
from weightflow.shared.modeling.registry import sources
from weightflow.shared.modeling.sources.path import describe

if TYPE_CHECKING:
    from weightflow.shared.artifacts import ArtifactStore


def cache_dir() -> Path:
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(explicit)
    home = os.environ.get("HF_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "huggingface") / "hub"


def snapshot(model_id: str, root: Path | None = None) -> tuple[Path, Path]:
    """(snapshot folder, the model's cache folder) of `org/name`; ValueError naming the path searched."""
    root = root or cache_dir()
    repo = root / f"models--{model_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        raise ValueError(f"hf: {model_id!r} is not in the local Hugging Face cache (looked for {repo}); weightflow "
                         "never downloads: fetch it where you have network access, or set HF_HUB_CACHE")
    ref = repo / "refs" / "main"
    revisions = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    revision = ref.read_text().strip() if ref.is_file() else (revisions[0] if len(revisions) == 1 else None)
    if revision is None or revision not in revisions:
        raise ValueError(f"hf: {model_id!r}: cannot tell which of the snapshots {revisions} in {snapshots} to use "
                         "(no refs/main); keep one, or use path: with the snapshot folder")
    return snapshots / revision, repo


class HuggingFaceCache(CandidateSource):
    name: ClassVar[str] = "hf"

    def local_dir(self, ref: CandidateRef, base_dir: Path | None) -> Path:
        return self._checked(ref)[0]

    def _checked(self, ref: CandidateRef) -> tuple[Path, Path]:
        """`snapshot`, its tree checked: what put_tree refuses, refused before a byte is read."""
        assert ref.hf is not None
        folder, repo = snapshot(ref.hf)
        tree_entries(folder, links_within=repo)
        return folder, repo

    def resolve(self, ref: CandidateRef, base_dir: Path | None, store: ArtifactStore | None) -> ResolvedCandidate:
        assert ref.hf is not None
        folder, repo = self._checked(ref)
        info = inspect_checkpoint(folder)
        tree = store.put_tree(folder, links_within=repo) if store is not None else None
        return describe(ref, info, ref.hf, self.name, tree)


sources.register(HuggingFaceCache.name, HuggingFaceCache())
