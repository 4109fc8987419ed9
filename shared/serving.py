"""Load a registered deployment exactly as its manifest pins it (every file checksum-verified)."""

from __future__ import annotations

from contracts.registry import Manifest
from shared.artifacts import ArtifactStore
from shared.modeling.encoder import Encoder
from shared.modeling.lora import attach_adapter
from shared.models import load_model


def read_manifest(store: ArtifactStore, manifest_id: str) -> Manifest:
    return Manifest.model_validate(store.read_json(manifest_id))


def load_deployment(store: ArtifactStore, manifest: Manifest, device: str = "auto") -> Encoder:
    for digest in manifest.checksums().values():
        store.verify(digest)
    encoder = load_model(store, manifest.model.tree_digest, device)
    if manifest.adapter is not None:
        encoder = attach_adapter(encoder, store.materialize_tree(manifest.adapter.tree_digest))
    return encoder
