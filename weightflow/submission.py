"""Turn a requirements file on disk into a `RequirementsSubmitted` event, checking it locally first.

The same validation the requirements service runs is run here, so a typo fails in the terminal with
every error listed before anything is published. Data files are put in the artifact store and travel
by digest.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID, uuid4

from contracts.requirements import RequirementsChanged, RequirementsSubmitted
from services.requirements.domain import RequirementsError, check_data, data_paths, parse_requirements
from shared.artifacts import ArtifactStore
from shared.modeling.datasets import Example, Pair, load_jsonl


def prepare(path: Path, store: ArtifactStore, run_id: UUID | None = None, *,
            changed: bool = False) -> RequirementsSubmitted | RequirementsChanged:
    if not path.is_file():
        raise RequirementsError([f"{path}: no such file"])
    text = path.read_text(encoding="utf-8")
    req = parse_requirements(text)
    paths = data_paths(req, path.parent)
    missing = [f"data.{split}: {p} does not exist" for split, p in paths.items() if not p.is_file()]
    if missing:
        raise RequirementsError(missing)

    def load_local(split: str) -> list[object]:
        return list(load_jsonl(paths[split], Pair if split == "general" else Example))

    errors = check_data(req, load_local, {split: "local" for split in paths})
    if errors:
        raise RequirementsError(errors)
    digests = {split: store.put_file(p) for split, p in paths.items()}
    if changed:
        return RequirementsChanged(run_id=run_id or uuid4(), deployment=req.deployment.name, document=text,
                                   data=digests, source=str(path))
    return RequirementsSubmitted(run_id=run_id or uuid4(), document=text, data=digests, source=str(path))
