"""Validate a requirements document, check its data, and render it as the one-page doc.

Every error is collected (not just the first) and phrased as what to fix, because the person reading
it is editing a YAML file, not debugging a service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError

from contracts.requirements import DATA_SPLITS, Requirements
from shared.modeling.catalog import known_candidates

LABELLED_SPLITS = ("eval", "canary", "train")


class RequirementsError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(document)"


def parse_requirements(text: str) -> Requirements:
    """YAML text -> Requirements, or RequirementsError listing every problem with its field path."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RequirementsError([f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(data, dict):
        raise RequirementsError(["the document must be a YAML mapping (name:, task:, data:, quality:, …)"])
    errors = _unknown_candidates(data.get("candidates"))
    try:
        req = Requirements.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field (check the spelling; see examples/support-tickets/requirements.yaml)"
            errors.append(f"{_location(err['loc'])}: {message}")
        raise RequirementsError(errors) from exc
    if errors:
        raise RequirementsError(errors)
    return req


def _unknown_candidates(names: object) -> list[str]:
    if not isinstance(names, list):
        return []
    known = known_candidates()
    return [f"candidates.{i}: unknown model {name!r}; known models: {', '.join(sorted(known))}"
            for i, name in enumerate(names) if isinstance(name, str) and name not in known]


def requirements_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def data_paths(req: Requirements, base_dir: Path) -> dict[str, Path]:
    """The data files named by the document, resolved against the document's folder."""
    paths: dict[str, Path] = {}
    for split in DATA_SPLITS:
        rel = getattr(req.data, split)
        if rel is not None:
            paths[split] = (base_dir / rel).resolve()
    return paths


def check_data(
    req: Requirements,
    load_split: Callable[[str], list[object]],
    digests: Mapping[str, str],
) -> list[str]:
    """Errors in the data the document points at: missing files, broken rows, labels the task lacks.

    `load_split(split)` returns the rows of one split or raises with a message naming the bad lines.
    """
    errors: list[str] = []
    if req.quality.tunable_gap > 0 and (req.data.train is None or req.data.general is None):
        errors.append("data.train and data.general are needed when quality.tunable_gap > 0 "
                      "(tuning trains on train and guards the general set); set tunable_gap: 0 to disable tuning")
    for split in DATA_SPLITS:
        if getattr(req.data, split) is None:
            continue
        if split not in digests:
            errors.append(f"data.{split}: file was not uploaded")
            continue
        try:
            rows = load_split(split)
        except Exception as exc:
            errors.append(f"data.{split}: {exc}")
            continue
        if not rows:
            errors.append(f"data.{split}: the file has no rows")
        if split in LABELLED_SPLITS:
            unknown = sorted({str(getattr(r, "label", "")) for r in rows} - set(req.task.labels))
            if unknown:
                errors.append(f"data.{split}: labels {unknown} are not in task.labels {sorted(req.task.labels)}")
    return errors


def render_markdown(req: Requirements, version: int, digest: str) -> str:
    """The one-page requirements doc a reviewer signs off."""
    hw = req.deployment.hardware
    forced = f" (forced: {req.quantization.force})" if req.quantization.force else ""
    labels = "\n".join(f"| `{name}` | {desc} |" for name, desc in req.task.labels.items())
    candidates = ", ".join(req.candidates) if req.candidates else "every known candidate"
    return f"""# Requirements: {req.name} (v{version})

Document sha256 `{digest}`.

## Task
{req.task.type} over {len(req.task.labels)} labels.

| label | description |
|---|---|
{labels}

## Acceptance
| requirement | value |
|---|---|
| quality ({req.quality.metric}) on the team's eval set | ≥ {req.quality.threshold:.3f} |
| latency p95 per request | ≤ {req.latency.p95_ms:g} ms |
| cost per 1k tasks | ≤ ${req.cost.per_1k_tasks_usd:g} |
| quality gap LoRA tuning may close | ≤ {req.quality.tunable_gap:.3f} |
| allowed drop on the general set after tuning | ≤ {req.quality.max_general_drop:.3f} |

## Deployment
- name `{req.deployment.name}`, {req.deployment.mode}, data residency: {req.deployment.data_residency or "unspecified"}
- hardware `{hw.profile}`: {hw.device}, {hw.memory_mb:g} MB memory, ${hw.cost_per_hour_usd:g}/hour
- quantization allowed: {", ".join(req.quantization.allowed) or "none"}{forced}
- candidates: {candidates}

## Monitoring
Canary every {req.monitoring.canary_interval_s:g} s on the held-out canary set; alert when quality drops by
{req.monitoring.quality_drop:g}, latency rises by {req.monitoring.latency_increase_pct:g}% or cost by
{req.monitoring.cost_increase_pct:g}%.
"""
