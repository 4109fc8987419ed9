"""Typed rows for eval/train/canary/general files, loaded strictly.

A team's eval set is the ground truth every decision rests on, so loading reports every broken
line at once (fix them in one pass) and never coerces types or keeps duplicate ids silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Row(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class Example(_Row):
    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    label: str = Field(min_length=1)


class Pair(_Row):
    id: str = Field(min_length=1)
    a: str = Field(min_length=1)
    b: str = Field(min_length=1)
    score: float = Field(ge=0.0, le=1.0)


T = TypeVar("T", bound=BaseModel)


class DatasetError(ValueError):
    """Every broken line of a file, one "path:lineno: reason" per entry in `problems`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s):\n" + "\n".join(problems))


def _describe(exc: ValidationError) -> str:
    reasons = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "row"
        reasons.append(f"{field}: {error['msg']}")
    return "; ".join(reasons)


def load_jsonl(path: Path, model: type[T]) -> list[T]:
    """Parse one JSON object per line into `model`; blank lines are allowed, nothing else is."""
    path = Path(path)
    rows: list[T] = []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(data, dict):
                problems.append(f"{where}: expected a JSON object, got {type(data).__name__}")
                continue
            try:
                row = model.model_validate(data)
            except ValidationError as exc:
                problems.append(f"{where}: {_describe(exc)}")
                continue
            row_id = getattr(row, "id", None)
            if isinstance(row_id, str):
                if row_id in first_seen:
                    problems.append(f"{where}: duplicate id {row_id!r} (first on line {first_seen[row_id]})")
                    continue
                first_seen[row_id] = lineno
            rows.append(row)
    if not rows and not problems:
        problems.append(f"{path}:0: the file has no rows")
    if problems:
        raise DatasetError(problems)
    return rows


def dataset_digest(rows: Iterable[BaseModel]) -> str:
    """sha256 over the rows' canonical JSON: equal for equal content, whatever the file formatting."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row.model_dump(mode="json"), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
