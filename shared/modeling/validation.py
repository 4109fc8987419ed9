"""Semantic checks of a requirements document against the model layer's registries (torch-free).

The contract (contracts.requirements_doc) checks the document's shape; this checks that what it names
exists: the task and its metric, the quantization schemes, the built-in candidates, the data's rows.
The CLI runs it before publishing; the requirements service runs it again on receipt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weightflow.contracts.requirements import DATA_SPLITS, Requirements
from weightflow.shared.modeling.datasets import DatasetError
from weightflow.shared.modeling.protocols import Task
from weightflow.shared.modeling.registry import UnknownNameError, quantizers, sources, tasks
from weightflow.shared.stats import half_width_at


def check_requirements(req: Requirements) -> tuple[Task | None, list[str]]:
    """(the task, every error)."""
    errors: list[str] = []
    try:
        task: Task | None = tasks.get(req.task.type)
    except UnknownNameError as exc:
        task = None
        errors.append(f"task.type: {exc}")
    if task is not None:
        errors += task.check_spec(req.task, req.quality.metric)
    for i, scheme in enumerate(req.quantization.allowed):
        if scheme not in quantizers.names():
            errors.append(f"quantization.allowed.{i}: unknown scheme {scheme!r}; known: "
                          f"{', '.join(quantizers.names())}")
    if req.quantization.force is not None and req.quantization.force not in req.quantization.allowed:
        errors.append(f"quantization.force: {req.quantization.force!r} is not in quantization.allowed")
    builtin = sources.get("builtin").known()
    for i, ref in enumerate(req.candidates or []):
        if ref.builtin is not None and ref.builtin not in builtin:
            errors.append(f"candidates.{i}: unknown model {ref.builtin!r}; known models: {', '.join(builtin)}")
        if ref.api is not None and task is not None:
            try:
                task.remote_route(req.task, ref.api.route)
            except ValueError as exc:
                errors.append(f"candidates.{i} ({ref.key}): api.route: {exc}")
    only_api = bool(req.candidates) and all(ref.api is not None for ref in req.candidates or [])
    if req.quality.tunable_gap > 0 and not only_api and (req.data.train is None or req.data.general is None):
        errors.append("data.train and data.general are needed when quality.tunable_gap > 0 "
                      "(tuning trains on train and guards the general set); set tunable_gap: 0 to disable tuning")
    return task, errors


def check_data(req: Requirements, task: Task, load_rows: Callable[[str], list[Any]],
               present: set[str]) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the data files the document names. `load_rows(split)` returns typed rows or
    raises DatasetError naming the bad lines; `present` are the splits that were supplied."""
    errors: list[str] = []
    warnings: list[str] = []
    for split in DATA_SPLITS:
        if getattr(req.data, split) is None:
            continue
        if split not in present:
            errors.append(f"data.{split}: file was not uploaded")
            continue
        try:
            rows = load_rows(split)
        except DatasetError as exc:
            errors += [p if p.startswith("data.") else f"data.{split}: {p}" for p in exc.problems]
            continue
        except (OSError, ValueError) as exc:
            errors.append(f"data.{split}: {exc}")
            continue
        errors += task.check_rows(req.task, req.quality.metric, split, rows)
        if split == "canary" and len(rows) < req.monitoring.min_canary_rows:
            width = half_width_at(req.quality.threshold, len(rows), req.monitoring.confidence)
            warnings.append(
                f"data.canary has {len(rows)} rows, fewer than monitoring.min_canary_rows "
                f"({req.monitoring.min_canary_rows}): at the threshold its score is only known to "
                f"±{width:.3f}, so canaries will rarely fail on quality")
    return errors, warnings
