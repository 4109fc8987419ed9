"""Artifact-store <-> model glue: store a candidate checkpoint, load a stored model (verified)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from contracts.benchmark import ModelArtifact
from shared.artifacts import ArtifactStore
from shared.modeling.catalog import candidate_spec, materialize_candidate
from shared.modeling.device import pick_device
from shared.modeling.encoder import Encoder, load_encoder


def store_candidate(store: ArtifactStore, name: str) -> ModelArtifact:
    """Write the candidate's checkpoint into the store; the same candidate always yields the same digest."""
    spec = candidate_spec(name)
    with tempfile.TemporaryDirectory(prefix="wf-candidate-") as tmp:
        tree = store.put_tree(materialize_candidate(name, Path(tmp) / name))
    return ModelArtifact(candidate=name, variant="fp32", tree_digest=tree, base_tree_digest=tree,
                         params=spec.params, size_class=spec.size_class)


def load_model(store: ArtifactStore, tree_digest: str, device: str = "auto", *,
               dequantize: bool = False) -> Encoder:
    """Materialize (every file checksum-verified) and load; a tampered file raises IntegrityError."""
    return load_encoder(store.materialize_tree(tree_digest), pick_device(device), dequantize=dequantize)
