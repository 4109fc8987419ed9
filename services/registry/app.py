"""Registry service: pins every artifact of a passing model in a manifest, promotes it, rolls back."""

from __future__ import annotations

import json
from collections.abc import Sequence

from contracts.base import Event, utcnow
from contracts.benchmark import Measurement, ModelArtifact
from contracts.fitting import FitCompleted, MemoryBudget
from contracts.registry import (
    DeploymentPromoted,
    Manifest,
    ManifestEntry,
    ModelRegistered,
    RollbackRequested,
    RolledBack,
)
from contracts.requirements import RunContext
from contracts.tuning import AdapterArtifact, TuningGated
from services.registry import domain
from services.registry.store import DeploymentRecord, ManifestRecord
from shared.bus import HandlerContext, PermanentError, Service

service = Service("registry", publishes=(ModelRegistered, DeploymentPromoted, RolledBack))


def _entry(ctx: HandlerContext, tree: str) -> ManifestEntry:
    return ManifestEntry(tree_digest=tree, files=ctx.store.tree_files(tree))


def _promote(cause: Event, ctx: HandlerContext, deployment: str, manifest_id: str) -> DeploymentPromoted:
    record = ctx.session.get(DeploymentRecord, deployment)
    previous = record.live_manifest_id if record else None
    if record is None:
        record = DeploymentRecord(name=deployment, live_manifest_id=manifest_id)
    else:
        history = json.loads(record.history_json)
        record.history_json = json.dumps([*history, record.live_manifest_id])
        record.live_manifest_id = manifest_id
        record.updated_at = utcnow()
    ctx.session.add(record)
    return DeploymentPromoted.follow(cause, deployment=deployment, manifest_id=manifest_id,
                                     previous_manifest_id=previous)


def _register(cause: Event, ctx: HandlerContext, context: RunContext, model: ModelArtifact,
              measurement: Measurement, budget: MemoryBudget, adapter: AdapterArtifact | None) -> list[Event]:
    trees = [model.tree_digest, model.base_tree_digest, adapter.tree_digest if adapter else None]
    for artifact in (t for t in trees if t):
        for digest in ctx.store.tree_files(artifact).values():
            ctx.store.verify(digest)
    deployment = context.requirements.deployment.name
    live = ctx.session.get(DeploymentRecord, deployment)
    manifest = Manifest(
        deployment=deployment, run_id=str(cause.run_id), created_at=cause.occurred_at.isoformat(),
        requirements_digest=context.requirements_digest, requirements_version=context.version,
        requirements=context.requirements, data=context.data, candidate=model.candidate, params=model.params,
        base=_entry(ctx, model.base_tree_digest), variant=model.variant,
        quantization=None if model.variant == "fp32" else f"{model.variant}-weight-only",
        model=_entry(ctx, model.tree_digest),
        adapter=_entry(ctx, adapter.tree_digest) if adapter else None,
        adapter_train_data_digest=adapter.train_data_digest if adapter else None,
        adapter_settings=adapter.settings if adapter else None,
        measurement=measurement, budget=budget,
        previous_manifest_id=live.live_manifest_id if live else None,
    )
    manifest_id = ctx.store.put_bytes(manifest.model_dump_json(indent=2).encode())
    runbook_digest = ctx.store.put_bytes(domain.render_runbook(manifest, manifest_id).encode())
    if ctx.session.get(ManifestRecord, manifest_id) is None:
        ctx.session.add(ManifestRecord(manifest_id=manifest_id, deployment=deployment, run_id=str(cause.run_id),
                                       runbook_digest=runbook_digest))
    registered = ModelRegistered.follow(cause, manifest_id=manifest_id, deployment=deployment,
                                        checksums=manifest.checksums(), runbook_digest=runbook_digest)
    return [registered, _promote(cause, ctx, deployment, manifest_id)]


@service.handles(FitCompleted)
def on_fit_completed(event: FitCompleted, ctx: HandlerContext) -> Sequence[Event]:
    """A fitted model with no quality gap is registered as is (a gap goes through tuning first)."""
    if event.quality_gap > 0:
        return []
    return _register(event, ctx, event.context, event.model, event.measurement, event.budget, None)


@service.handles(TuningGated)
def on_tuning_gated(event: TuningGated, ctx: HandlerContext) -> Sequence[Event]:
    """A tuned model that passed its gate is registered with its adapter and training-data hash."""
    if not event.passed:
        return []
    return _register(event, ctx, event.context, event.model, event.measurement, event.budget, event.adapter)


@service.handles(RollbackRequested)
def on_rollback(event: RollbackRequested, ctx: HandlerContext) -> Sequence[Event]:
    """Promote the previously live manifest (or the one named) again."""
    record = ctx.session.get(DeploymentRecord, event.deployment)
    if record is None:
        raise PermanentError(f"deployment {event.deployment!r} has never been registered")
    history: list[str] = json.loads(record.history_json)
    target = event.to_manifest_id or (history[-1] if history else None)
    if target is None:
        raise PermanentError(f"deployment {event.deployment!r} has no earlier manifest to roll back to")
    if ctx.session.get(ManifestRecord, target) is None:
        raise PermanentError(f"manifest {target} is not registered for {event.deployment!r}")
    current = record.live_manifest_id
    record.live_manifest_id = target
    record.history_json = json.dumps([m for m in history if m != target] + [current])
    record.updated_at = utcnow()
    ctx.session.add(record)
    return [RolledBack.follow(event, deployment=event.deployment, from_manifest_id=current, to_manifest_id=target),
            DeploymentPromoted.follow(event, deployment=event.deployment, manifest_id=target,
                                      previous_manifest_id=current)]
