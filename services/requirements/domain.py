"""Check a submitted requirements document and its data, and render it as the one-page doc.

Runs the same checks as the CLI (contracts.requirements_doc, shared.modeling.validation) against the
artifact store instead of the user's files, because a service cannot trust that the CLI ran them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightflow.contracts.requirements import (
    DataRefs,
    Requirements,
    RequirementsChanged,
    RequirementsSubmitted,
    ResolvedCandidate,
    RunContext,
)
from weightflow.contracts.requirements_doc import RequirementsError, parse_requirements, requirements_digest
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.registry import sources
from weightflow.shared.modeling.stored import rows
from weightflow.shared.modeling.validation import check_data, check_requirements


@dataclass(frozen=True)
class Valid:
    requirements: Requirements
    digest: str
    data: DataRefs
    candidates: list[ResolvedCandidate]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Invalid:
    errors: list[str]


def _candidates(req: Requirements, uploaded: list[ResolvedCandidate], store: ArtifactStore,
                errors: list[str]) -> list[ResolvedCandidate]:
    by_key = {c.key: c for c in uploaded}
    out: list[ResolvedCandidate] = []
    refs = req.candidates or []
    if not refs:  # default: every built-in
        from weightflow.contracts.requirements import CandidateRef

        refs = [CandidateRef(builtin=name) for name in sources.get("builtin").known()]
    for i, ref in enumerate(refs):
        source = sources.get(ref.source)
        if source.resolved_by == "service":
            try:
                out.append(source.resolve(ref, None, None))
            except ValueError as exc:
                errors.append(f"candidates.{i}: {exc}")
            continue
        found = by_key.get(ref.key)
        if found is None or found.tree_digest is None or not store.exists(found.tree_digest):
            errors.append(f"candidates.{i} ({ref.key}): its checkpoint was not uploaded; submit the file with "
                          "the weightflow CLI, which stores path: and hf: candidates")
            continue
        out.append(found)
    return out


def validate(event: RequirementsSubmitted | RequirementsChanged, store: ArtifactStore) -> Valid | Invalid:
    try:
        req = parse_requirements(event.document)
    except RequirementsError as exc:
        return Invalid(exc.errors)
    task, errors = check_requirements(req)
    if task is None or errors:
        return Invalid(errors)
    if isinstance(event, RequirementsChanged) and event.deployment != req.deployment.name:
        return Invalid([f"deployment.name {req.deployment.name!r} is not the deployment being changed "
                        f"({event.deployment!r})"])
    present = {split for split, digest in event.data.items() if store.exists(digest)}
    data_errors, warnings = check_data(req, task, lambda split: rows(store, event.data[split], task, split), present)
    candidates = _candidates(req, event.candidates, store, errors)
    errors += data_errors
    if errors:
        return Invalid(errors)
    data = DataRefs(**{k: v for k, v in event.data.items() if getattr(req.data, k, None)})
    return Valid(req, requirements_digest(event.document), data, candidates, warnings)


def context(valid: Valid, version: int) -> RunContext:
    return RunContext(requirements=valid.requirements, version=version, data=valid.data,
                      requirements_digest=valid.digest, candidates=valid.candidates)


def render_markdown(req: Requirements, version: int, digest: str) -> str:
    """The one-page requirements doc a reviewer signs off."""
    hw = req.deployment.hardware
    forced = f" (forced: {req.quantization.force})" if req.quantization.force else ""
    if req.quantization.max_quality_loss is not None:
        forced += (f"; a variant may lose at most {req.quantization.max_quality_loss:g} against the unquantized "
                   "model on the same eval rows")
    decide = ("passes when the score itself clears it (`decide_on: estimate`)" if req.quality.decide_on == "estimate"
              else "misses: only a lower bound that clears it passes (`decide_on: lower_bound`)")
    labels = "\n".join(f"| `{name}` | {desc} |" for name, desc in (req.task.labels or {}).items())
    candidates = ", ".join(c.key for c in req.candidates) if req.candidates else "every built-in candidate"
    mon = req.monitoring
    return f"""# Requirements: {req.name} (v{version})

Document sha256 `{digest}`.

## Task
{req.task.type} over {len(req.task.labels or {})} labels.

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
| a score whose {req.quality.confidence:.0%} interval straddles the threshold (inconclusive) | {decide} |

## Deployment
- name `{req.deployment.name}`, {req.deployment.mode}, data residency: {req.deployment.data_residency or "unspecified"}
- hardware `{hw.profile}`: {hw.device}, {hw.memory_mb:g} MB memory, ${hw.cost_per_hour_usd:g}/hour
- quantization allowed: {", ".join(req.quantization.allowed) or "none"}{forced}
- candidates: {candidates}

## Monitoring
Canary every {mon.canary_interval_s:g} s on the held-out canary set, judged with a {mon.confidence:.0%} interval:
it fails on quality when the interval lies below the threshold or the score fell significantly, by more than
{mon.quality_drop:g}, from its registration baseline; latency and cost alert past +{mon.latency_increase_pct:g}% and
+{mon.cost_increase_pct:g}%. At most {mon.max_reroutes} automatic reroute(s) per requirements version, then the
workflow halts for an operator.
"""
