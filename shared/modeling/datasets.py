"""Typed rows for eval/train/canary/general files, loaded strictly.

A team's eval set is the ground truth every decision rests on, so loading reports every broken
line at once (fix them in one pass) and never coerces types or keeps duplicate ids silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from weightflow.contracts.limits import MAX_DATA_FILE_BYTES, MAX_DATA_LINE_BYTES, MAX_DATA_ROWS, MAX_TEXT_CHARS


class _Row(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class Example(_Row):
    id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    label: str = Field(min_length=1, max_length=200)


class Pair(_Row):
    id: str = Field(min_length=1, max_length=200)
    a: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    b: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
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


def _lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line, None for a line over the cap (skipped without holding it in memory)."""
    with path.open("rb") as handle:
        lineno = 0
        while True:
            line = handle.readline(MAX_DATA_LINE_BYTES + 1)
            if not line:
                return
            lineno += 1
            if len(line) > MAX_DATA_LINE_BYTES and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # drain the rest of the over-long line
                    line = handle.readline(MAX_DATA_LINE_BYTES)
                yield lineno, None
                continue
            yield lineno, line


def load_jsonl(path: Path, model: type[T], *, label: str | None = None) -> list[T]:
    """Parse one JSON object per line into `model`; blank lines are allowed, nothing else is.

    Bounded: the file, each line and each text field have caps (contracts.limits); `label` names the
    file in messages instead of its path.
    """
    path = Path(path)
    name = label or str(path)
    size = path.stat().st_size
    if size > MAX_DATA_FILE_BYTES:
        raise DatasetError([f"{name}: the file is {size} bytes, over the {MAX_DATA_FILE_BYTES}-byte cap; "
                            "a smaller, representative sample gives the same decisions"])
    rows: list[T] = []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for lineno, raw in _lines(path):
        where = f"{name}:{lineno}"
        if len(problems) >= 50:
            problems.append(f"{name}: more problems not shown")
            break
        if raw is None:
            problems.append(f"{where}: the line is longer than {MAX_DATA_LINE_BYTES} bytes")
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{where}: not UTF-8 (byte {exc.start})")
            continue
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            problems.append(f"{where}: JSON nested too deeply")
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
        if len(rows) > MAX_DATA_ROWS:
            problems.append(f"{name}: more than {MAX_DATA_ROWS} rows; use a representative sample")
            break
    if not rows and not problems:
        problems.append(f"{name}:0: the file has no rows")
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
