"""Turn a requirements file on disk into a `RequirementsSubmitted` event, checking it locally first.

The same validation the requirements service runs is run here, so a typo fails in the terminal with
every error listed before anything is stored or published. Data files and user checkpoints are read
strictly inside the requirements file's folder (or the local Hugging Face cache), then put in the
artifact store and travel by digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID, uuid4

from weightflow.contracts.limits import MAX_DOCUMENT_BYTES
from weightflow.contracts.requirements import (
    DATA_SPLITS,
    Requirements,
    RequirementsChanged,
    RequirementsSubmitted,
    ResolvedCandidate,
)
from weightflow.contracts.requirements_doc import RequirementsError, decode_document, parse_requirements
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.datasets import load_jsonl
from weightflow.shared.modeling.protocols import Task
from weightflow.shared.modeling.registry import sources
from weightflow.shared.modeling.validation import check_data, check_requirements
from weightflow.shared.safe_paths import UnsafePathError, resolve_inside


@dataclass
class Prepared:
    event: RequirementsSubmitted | RequirementsChanged
    requirements: Requirements
    warnings: list[str] = field(default_factory=list)


def read_document(path: Path) -> str:
    if not path.is_file():
        why = "is a folder; name the requirements YAML file in it" if path.is_dir() else "no such file"
        raise RequirementsError([f"{path}: {why}"])
    if path.stat().st_size > MAX_DOCUMENT_BYTES:
        raise RequirementsError([f"{path} is {path.stat().st_size} bytes, over the {MAX_DOCUMENT_BYTES}-byte cap; "
                                 "a requirements file is one page"])
    return decode_document(path.read_bytes())


def _data_paths(req: Requirements, base: Path, errors: list[str]) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for split in DATA_SPLITS:
        rel = getattr(req.data, split)
        if rel is None:
            continue
        try:
            paths[split] = resolve_inside(base, rel, what=f"data.{split}")
        except UnsafePathError as exc:
            errors.append(str(exc))
    return paths


def _check_candidates(req: Requirements, task: Task, base: Path, errors: list[str]) -> None:
    for i, ref in enumerate(req.candidates or []):
        where = f"candidates.{i} ({ref.key})"
        errors += [f"{where}: {e}" for e in sources.get(ref.source).check(ref, base, task, req.task)]


def prepare(path: Path, store: ArtifactStore, run_id: UUID | None = None, *, changed: bool = False) -> Prepared:
    """Validate everything, then store data and user checkpoints; raise RequirementsError with every error."""
    text = read_document(path)
    req = parse_requirements(text)
    task, errors = check_requirements(req)
    if task is None or errors:
        raise RequirementsError(errors)
    base = path.parent
    paths = _data_paths(req, base, errors)
    _check_candidates(req, task, base, errors)

    def load_local(split: str) -> list[object]:
        model = task.general_row if split == "general" else task.row
        return list(load_jsonl(paths[split], model, label=f"data.{split}"))

    data_errors, warnings = check_data(req, task, load_local, set(paths))
    errors += [e for e in data_errors if not e.endswith("file was not uploaded")]
    if errors:
        raise RequirementsError(errors)
    digests = {split: store.put_file(p) for split, p in paths.items()}
    uploaded: list[ResolvedCandidate] = []
    for ref in req.candidates or []:
        source = sources.get(ref.source)
        if source.resolved_by == "client":
            uploaded.append(source.resolve(ref, base, store))
    event: RequirementsSubmitted | RequirementsChanged
    if changed:
        event = RequirementsChanged(run_id=run_id or uuid4(), deployment=req.deployment.name, document=text,
                                    data=digests, candidates=uploaded, source=str(path))
    else:
        event = RequirementsSubmitted(run_id=run_id or uuid4(), document=text, data=digests, candidates=uploaded,
                                      source=str(path))
    return Prepared(event, req, warnings)
