"""Monitoring service: scheduled evaluation canaries on the live model; drift alerts.

Replicas share the schedule safely: a due canary is claimed with a compare-and-set on its due time,
so exactly one replica runs it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import update
from sqlmodel import col, select

from contracts.base import Event, utcnow
from contracts.benchmark import Measurement
from contracts.monitoring import CanaryFailed, CanaryPassed, CanaryRequested, DriftDetected
from contracts.registry import DeploymentPromoted
from services.monitoring import domain
from services.monitoring.store import CanaryRecord, Watch
from shared.artifacts import IntegrityError
from shared.bus import HandlerContext, Service
from shared.measure import measure
from shared.serving import load_deployment, read_manifest
from shared.splits import examples

service = Service("monitoring", publishes=(CanaryPassed, CanaryFailed, DriftDetected))


def _now() -> datetime:
    return utcnow()


def _interval(ctx: HandlerContext, configured: float) -> float:
    return ctx.settings.canary_interval_s or configured


def _canary(watch: Watch, ctx: HandlerContext, cause: Event | None) -> list[Event]:
    manifest = read_manifest(ctx.store, watch.manifest_id)
    req = manifest.requirements
    # An operator's request is its own run (so its sender can follow it); a scheduled canary belongs to the
    # run that promoted the deployment it watches.
    if cause is not None:
        envelope = {"run_id": cause.run_id, "causation_id": cause.event_id}
    else:
        envelope = {"run_id": UUID(watch.run_id), "causation_id": UUID(watch.promoted_event_id)}
    try:
        encoder = load_deployment(ctx.store, manifest, ctx.settings.device)
        m = measure(encoder, examples(ctx.store, manifest.data.canary), req.task.labels, req.deployment.hardware)
    except IntegrityError as exc:
        reason = f"integrity: {exc}"
        ctx.session.add(CanaryRecord(deployment=watch.deployment, manifest_id=watch.manifest_id, passed=False,
                                     measurement_json=None, reasons_json=json.dumps([reason])))
        return [CanaryFailed(**envelope, deployment=watch.deployment, manifest_id=watch.manifest_id, reasons=[reason]),
                DriftDetected(**envelope, deployment=watch.deployment, manifest_id=watch.manifest_id,
                              kind="integrity", baseline=1.0, observed=0.0, limit=1.0)]
    baseline = Measurement.model_validate_json(watch.baseline_json) if watch.baseline_json else None
    verdict = domain.judge_canary(m, req, baseline)
    if baseline is None:
        watch.baseline_json = m.model_dump_json()
        ctx.session.add(watch)
    ctx.session.add(CanaryRecord(deployment=watch.deployment, manifest_id=watch.manifest_id, passed=verdict.passed,
                                 measurement_json=m.model_dump_json(), reasons_json=json.dumps(verdict.failures)))
    out: list[Event] = [DriftDetected(**envelope, deployment=watch.deployment, manifest_id=watch.manifest_id,
                                      kind=d.kind, baseline=d.baseline, observed=d.observed, limit=d.limit)
                        for d in verdict.drifts]
    if verdict.passed:
        out.append(CanaryPassed(**envelope, deployment=watch.deployment, manifest_id=watch.manifest_id, measurement=m))
    else:
        out.append(CanaryFailed(**envelope, deployment=watch.deployment, manifest_id=watch.manifest_id,
                                reasons=verdict.failures, measurement=m))
    return out


@service.handles(DeploymentPromoted)
def on_promoted(event: DeploymentPromoted, ctx: HandlerContext) -> Sequence[Event]:
    """Watch the newly live manifest; its first canary is due at once and sets the drift baseline."""
    manifest = read_manifest(ctx.store, event.manifest_id)
    watch = ctx.session.get(Watch, event.deployment) or Watch(
        deployment=event.deployment, manifest_id=event.manifest_id, run_id=str(event.run_id), interval_s=0,
        promoted_event_id=str(event.event_id),
        next_due_at=_now())
    watch.manifest_id = event.manifest_id
    watch.run_id = str(event.run_id)
    watch.promoted_event_id = str(event.event_id)
    watch.interval_s = _interval(ctx, manifest.requirements.monitoring.canary_interval_s)
    watch.next_due_at = _now()
    watch.baseline_json = None
    watch.updated_at = utcnow()
    ctx.session.add(watch)
    return []


@service.handles(CanaryRequested)
def on_canary_requested(event: CanaryRequested, ctx: HandlerContext) -> Sequence[Event]:
    """Run a canary now (an operator's `weightflow canary DEPLOYMENT`)."""
    watch = ctx.session.get(Watch, event.deployment)
    if watch is None:
        return []
    return _canary(watch, ctx, event)


@service.every(lambda settings: settings.scheduler_tick_s)
def run_due_canaries(ctx: HandlerContext) -> Sequence[Event]:
    """Claim each due canary (compare-and-set on next_due_at, so one replica runs it) and run it."""
    now = _now()
    out: list[Event] = []
    due = ctx.session.exec(select(Watch).where(col(Watch.next_due_at) <= now)).all()
    for watch in due:
        claimed = ctx.session.execute(
            update(Watch).where(col(Watch.deployment) == watch.deployment)
            .where(col(Watch.next_due_at) == watch.next_due_at)
            .values(next_due_at=now + timedelta(seconds=watch.interval_s)))
        ctx.session.commit()
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            ctx.session.refresh(watch)
            out += _canary(watch, ctx, None)
    return out

