"""`path` candidates: a Hugging Face model directory next to the requirements file.

Checked before anything is stored (shared.modeling.checkpoint), resolved strictly inside the
requirements file's folder, and stored as a whole tree (subfolders, shards, tokenizer): two candidates
with the same bytes share one stored tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from weightflow.contracts.requirements import CandidateRef, ResolvedCandidate
from weightflow.shared.artifacts import tree_entries
from weightflow.shared.modeling.checkpoint import CheckpointInfo, inspect_checkpoint
from weightflow.shared.modeling.protocols import CandidateSource
from weightflow.shared.modeling.registry import sources
from weightflow.shared.modeling.sizes import size_class
from weightflow.shared.safe_paths import resolve_inside

if TYPE_CHECKING:
    from weightflow.shared.artifacts import ArtifactStore


def describe(ref: CandidateRef, info: CheckpointInfo, reference: str, source: str, tree: str | None
             ) -> ResolvedCandidate:
    return ResolvedCandidate(key=ref.key, source=source, reference=reference, tree_digest=tree, params=info.params,
                             size_class=size_class(info.params),
                             architecture=(info.architectures or [info.model_type])[0])


class LocalPath(CandidateSource):
    name: ClassVar[str] = "path"

    def local_dir(self, ref: CandidateRef, base_dir: Path | None) -> Path:
        assert ref.path is not None
        if base_dir is None:
            raise ValueError(f"candidate path {ref.path!r} can only be read where the requirements file is "
                             "(submit it with the weightflow CLI)")
        directory = resolve_inside(base_dir, ref.path, kind="dir", what="candidate path")
        tree_entries(directory)  # a symlink, an odd name or a special file anywhere: refused before a byte is read
        return directory

    def resolve(self, ref: CandidateRef, base_dir: Path | None, store: ArtifactStore | None) -> ResolvedCandidate:
        directory = self.local_dir(ref, base_dir)
        info = inspect_checkpoint(directory)
        tree = store.put_tree(directory) if store is not None else None
        return describe(ref, info, str(ref.path), self.name, tree)


sources.register(LocalPath.name, LocalPath())
