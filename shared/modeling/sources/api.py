"""`api` candidates: a hosted model behind an OpenAI-compatible HTTP API.

Such a candidate has no weights here, so what the artifact store pins is its endpoint card
(`endpoint.json`: base URL, model id, route, prices, limits; never the key), stored as a tree like a
checkpoint's. The manifest's model entry is that card: a deployment re-stood from the manifest calls
exactly that endpoint and model, and the card's sha256 says it was not edited since.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from weightflow.contracts.requirements import ApiEndpoint, CandidateRef, ResolvedCandidate, TaskSpec
from weightflow.shared.modeling.protocols import CandidateSource, Task
from weightflow.shared.modeling.registry import sources
from weightflow.shared.modeling.remote import Endpoint

if TYPE_CHECKING:
    from weightflow.shared.artifacts import ArtifactStore

CARD = "endpoint.json"
CARD_KIND = "weightflow.endpoint/v1"


def card_json(api: ApiEndpoint) -> bytes:
    """The endpoint card's bytes: the same endpoint always gives the same bytes (and so the same digest)."""
    body = {"kind": CARD_KIND, **api.model_dump(mode="json")}
    return json.dumps(body, sort_keys=True, indent=2).encode()


def read_card(store: ArtifactStore, tree_digest: str) -> ApiEndpoint:
    """The endpoint a stored card pins, verified against its checksum."""
    files = store.tree_files(tree_digest)
    if CARD not in files:
        raise ValueError(f"tree {tree_digest[:12]} is not an endpoint card (no {CARD})")
    body = store.read_json(files[CARD])
    if body.pop("kind", None) != CARD_KIND:
        raise ValueError(f"{CARD} in tree {tree_digest[:12]} is not a {CARD_KIND} card")
    return ApiEndpoint.model_validate(body)


class ApiSource(CandidateSource):
    name: ClassVar[str] = "api"
    remote: ClassVar[bool] = True

    def local_dir(self, ref: CandidateRef, base_dir: Path | None) -> Path:
        raise ValueError(f"candidate {ref.key} is a hosted API: it has no checkpoint folder")

    def check(self, ref: CandidateRef, base_dir: Path, task: Task, spec: TaskSpec) -> list[str]:
        return []  # the route is checked with the requirements (shared.modeling.validation)

    def resolve(self, ref: CandidateRef, base_dir: Path | None, store: ArtifactStore | None) -> ResolvedCandidate:
        assert ref.api is not None
        tree = None
        if store is not None:
            with tempfile.TemporaryDirectory(prefix="wf-endpoint-") as tmp:
                (Path(tmp) / CARD).write_bytes(card_json(ref.api))
                tree = store.put_tree(Path(tmp))
        return ResolvedCandidate(key=ref.key, source=self.name, reference=f"{ref.api.model} at {ref.api.url}",
                                 tree_digest=tree, params=0, size_class=ref.api.size_class,
                                 architecture="openai-compatible")

    def endpoint(self, store: ArtifactStore, tree_digest: str) -> Endpoint:
        return Endpoint.of_api(read_card(store, tree_digest))


sources.register(ApiSource.name, ApiSource())
