"""Monitoring service: evaluation canaries on the live model, on a schedule and on demand; drift alerts.

The schedule only claims due canaries (a compare-and-set on the due time, so one replica claims each)
and publishes a `CanaryRequested`; the canary itself runs as an ordinary handler, so a replica killed
mid-canary loses nothing: JetStream redelivers the request.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from weightflow.contracts.base import Event, utcnow
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.monitoring import (
    CanaryFailed,
    CanaryPassed,
    CanaryRequested,
    DeployedModel,
    DriftDetected,
    ServingEndpointAnnounced,
)
from weightflow.contracts.registry import DeploymentPromoted, Manifest
from weightflow.contracts.workflow import RequestRefused, WorkflowResumed
from weightflow.services.monitoring import domain
from weightflow.services.monitoring.tables import CanaryRecord, ServedEndpoint, Watch
from weightflow.shared import metrics, sample_logs
from weightflow.shared.artifacts import IntegrityError
from weightflow.shared.bus import Commit, HandlerContext, HandlerResult, OrphanError, Service
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.registry import sources
from weightflow.shared.modeling.remote import Endpoint, EndpointError
from weightflow.shared.modeling.stored import is_remote, load_deployment, read_manifest, rows, task_of

service = Service("monitoring")


class _KeptModels:
    """The models of the last few manifests canaried here, by manifest id (a manifest pins its files, so the model it
    names never changes): a deployment canaried again, or many deployments of one manifest, do not load the model
    from the store every time (with the default of one, a fleet of different models canaried in turn still loads
    each). Every pinned file is verified before each canary, as loading would, and a kept model is used only while
    every store object is still the very file it was loaded from (a repair swaps a new file in, and the kept model
    would still hold the old bytes): otherwise it is loaded again. A failed verification drops it. One canary runs
    at a time per subscriber (a kept model's tokenizer is not safe to share between threads)."""

    def __init__(self) -> None:
        self._models: OrderedDict[str, tuple[LoadedModel, dict[str, tuple[int, int]]]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _files(ctx: HandlerContext, manifest: Manifest) -> dict[str, tuple[int, int]]:
        out = {}
        for digest in manifest.checksums().values():
            found = os.stat(ctx.store.path_of(digest))
            out[digest] = (found.st_dev, found.st_ino)
        return out

    def get(self, ctx: HandlerContext, manifest_id: str, manifest: Manifest) -> LoadedModel:
        keep = ctx.settings.canary_models_kept
        with self._lock:
            kept = self._models.get(manifest_id)
            if kept is not None:
                self._models.move_to_end(manifest_id)
        if kept is not None:
            try:
                for digest in manifest.checksums().values():
                    ctx.store.verify(digest)
                if self._files(ctx, manifest) == kept[1]:
                    return kept[0]
            except (IntegrityError, OSError):
                with self._lock:
                    self._models.pop(manifest_id, None)
                raise
            with self._lock:  # a store object was replaced since: what the kept model holds is not what is pinned
                self._models.pop(manifest_id, None)
        if keep > 0:
            with self._lock:  # make room first: the model being replaced is not held while the new one loads
                while len(self._models) >= keep:
                    self._models.popitem(last=False)
        loaded = load_deployment(ctx.store, manifest, ctx.settings.device)  # verifies every pinned file
        if keep > 0:
            files = self._files(ctx, manifest)
            with self._lock:
                self._models[manifest_id] = (loaded, files)
                while len(self._models) > keep:
                    self._models.popitem(last=False)
        return loaded


_kept = _KeptModels()


def _interval(ctx: HandlerContext, configured: float) -> float:
    return ctx.settings.canary_interval_s or configured


def _deployed(manifest: Manifest) -> DeployedModel:
    return DeployedModel(candidate=manifest.candidate, variant=manifest.variant,
                         adapter_digest=manifest.adapter.tree_digest if manifest.adapter else None,
                         requirements_version=manifest.requirements_version)


def _endpoint(ctx: HandlerContext, manifest: Manifest) -> Endpoint | None:
    """What clients call, when it is not this process: an API deployment's endpoint, or the `weightflow
    serve` announced for the deployment (its key, when it wants one, is WEIGHTFLOW_SERVE_API_KEY here)."""
    if is_remote(manifest.source):
        return sources.get(manifest.source).endpoint(ctx.store, manifest.model.tree_digest)
    served = ctx.read(lambda s: s.get(ServedEndpoint, manifest.deployment))
    if served is None or not served.online:
        return None
    # One request at a time: the latency one client sees, not the server's queue under our own load. A
    # classifier is asked for its labels (/v1/classify), the answer its clients get.
    task = task_of(manifest.requirements.task)
    endpoint = Endpoint.served(served.url, manifest.deployment, api_key=os.environ.get("WEIGHTFLOW_SERVE_API_KEY"),
                               max_concurrency=1)
    if "classify" in task.serves and "classify" in task.remote_routes:
        endpoint = dataclasses.replace(endpoint, route="classify")
    return endpoint


def _judge(ctx: HandlerContext, manifest_id: str, manifest: Manifest
           ) -> tuple[domain.CanaryJudgement, Measurement | None]:
    """The canary set through what clients call (over HTTP when there is an endpoint), judged."""
    req = manifest.requirements
    task = task_of(req.task)
    try:
        canary = rows(ctx.store, manifest.data.canary, task, "canary")
        endpoint = _endpoint(ctx, manifest)
        if endpoint is not None:
            for digest in manifest.checksums().values():  # what loading would verify: the store stays checked
                ctx.store.verify(digest)
            m = task.evaluate_remote(endpoint, req.task, canary, req.quality.metric, req.deployment.hardware,
                                     req.monitoring.confidence)
        else:
            loaded = _kept.get(ctx, manifest_id, manifest)  # every pinned file verified
            m = task.runtime().evaluate(loaded, req.task, canary, req.quality.metric, req.deployment.hardware,
                              req.monitoring.confidence)
        m = sample_logs.keep(ctx.store, m)  # this canary's own rows
    except IntegrityError as exc:
        return domain.integrity_failure(str(exc)), None
    except EndpointError as exc:
        return domain.unreachable_failure(f"{exc.kind}: {exc}"), None
    return domain.judge_canary(m, req, manifest.canary_baseline), m


@service.handles(CanaryRequested, requires_run=False)
def on_canary_requested(event: CanaryRequested, ctx: HandlerContext) -> HandlerResult:
    """Run the canary of the live manifest now (scheduled, or an operator's `weightflow canary`)."""
    if event.scheduled and event.due_at is not None:  # a redelivered request counts as late as it is
        due = event.due_at if event.due_at.tzinfo else event.due_at.replace(tzinfo=UTC)
        metrics.CANARY_LAG.observe(max(0.0, (utcnow() - due).total_seconds()))
    watch = ctx.read(lambda s: s.get(Watch, event.deployment))
    if watch is None:
        if event.scheduled:
            return []
        return [RequestRefused.follow(event, request=event.type_name(), deployment=event.deployment,
                                      reason=f"{event.deployment!r} has no live manifest to watch; see "
                                             "`weightflow registry ls`")]
    manifest = read_manifest(ctx.store, watch.manifest_id)
    judgement, m = _judge(ctx, watch.manifest_id, manifest)
    common: dict[str, Any] = {"deployment": watch.deployment, "manifest_id": watch.manifest_id,
                              "manifest_run_id": UUID(manifest.run_id)}
    out: list[Event] = [DriftDetected.follow(event, deployment=watch.deployment, manifest_id=watch.manifest_id,
                                             kind=d.kind, baseline=d.baseline, observed=d.observed, limit=d.limit)
                        for d in judgement.drifts]
    if judgement.passed:
        out.append(CanaryPassed.follow(event, **common, model=_deployed(manifest), measurement=m,
                                       baseline=manifest.canary_baseline, verdict=judgement.verdict))
    else:
        out.append(CanaryFailed.follow(event, **common, model=_deployed(manifest), kind=judgement.kind,
                                       verdict=judgement.verdict, measurement=m, baseline=manifest.canary_baseline))

    def commit(session: Session) -> Sequence[Event]:
        session.add(CanaryRecord(deployment=watch.deployment, manifest_id=watch.manifest_id, passed=judgement.passed,
                                 kind=None if judgement.passed else judgement.kind,
                                 measurement_json=m.model_dump_json() if m is not None else None,
                                 verdict_json=judgement.verdict.model_dump_json()))
        return out

    return commit


@service.handles(DeploymentPromoted, requires_run=False)
def on_promoted(event: DeploymentPromoted, ctx: HandlerContext) -> HandlerResult:
    """Watch the newly live manifest; its first canary is due at once."""
    if not ctx.store.exists(event.manifest_id):
        raise OrphanError(f"promoted manifest {event.manifest_id[:12]} is not in the artifact store")
    manifest = read_manifest(ctx.store, event.manifest_id)
    if manifest.deployment != event.deployment:
        raise OrphanError(f"manifest {event.manifest_id[:12]} belongs to {manifest.deployment!r}, not "
                          f"{event.deployment!r}")

    def commit(session: Session) -> Sequence[Event]:
        watch = session.get(Watch, event.deployment) or Watch(
            deployment=event.deployment, manifest_id=event.manifest_id, run_id=str(event.run_id),
            manifest_run_id=manifest.run_id, promoted_event_id=str(event.event_id), interval_s=0,
            next_due_at=utcnow())
        watch.manifest_id, watch.run_id, watch.manifest_run_id = event.manifest_id, str(event.run_id), manifest.run_id
        watch.promoted_event_id = str(event.event_id)
        watch.interval_s = _interval(ctx, manifest.requirements.monitoring.canary_interval_s)
        watch.next_due_at = watch.updated_at = utcnow()
        session.add(watch)
        return []

    # A promotion is watched once: a replay (a fresh event id) of an older one must not point the watch back
    # at a manifest that is no longer live, nor run an extra canary.
    return ctx.once(f"watch:{event.run_id}:{event.manifest_id}", event, commit)


@service.handles(ServingEndpointAnnounced, requires_run=False)
def on_endpoint_announced(event: ServingEndpointAnnounced, ctx: HandlerContext) -> HandlerResult:
    """Remember where the deployment is served (the newest announcement wins; an older one redelivered
    late changes nothing)."""

    def commit(session: Session) -> Sequence[Event]:
        row = session.get(ServedEndpoint, event.deployment)
        if row is not None and row.announced_at.replace(tzinfo=None) > event.occurred_at.replace(tzinfo=None):
            return []
        row = row or ServedEndpoint(deployment=event.deployment, url=event.url, online=event.online,
                                    announced_at=event.occurred_at)
        row.url, row.online, row.announced_at = event.url, event.online, event.occurred_at
        session.add(row)
        return []

    return commit


@service.handles(WorkflowResumed, requires_run=False)
def on_resumed(event: WorkflowResumed, ctx: HandlerContext) -> HandlerResult:
    """An operator resumed the deployment's loop-back: run its canary now."""

    def commit(session: Session) -> Sequence[Event]:
        watch = session.get(Watch, event.deployment)
        if watch is not None:
            watch.next_due_at = utcnow()
            session.add(watch)
        return []

    return commit


# Due canaries claimed per tick, oldest first: a fleet promoted at once is requested over a few ticks, each tick's
# transaction stays short, and a tick reads only due rows (next_due_at is indexed), however many are not due.
CLAIMS_PER_TICK = 500


def due_watches(now: datetime) -> SelectOfScalar[Watch]:
    """The due watches a tick claims, oldest first (the deployment breaks ties, so replicas lock rows in one order)."""
    return (select(Watch).where(col(Watch.next_due_at) <= now)
            .order_by(col(Watch.next_due_at), col(Watch.deployment)).limit(CLAIMS_PER_TICK))


@service.every(lambda settings: settings.scheduler_tick_s)
def claim_due_canaries(ctx: HandlerContext) -> Commit:
    """Claim each due canary (compare-and-set on next_due_at, so one replica claims it), move it to its next slot
    on the deployment's own phase, and request it."""

    def commit(session: Session) -> Sequence[Event]:
        now = utcnow()
        out: list[Event] = []
        due = session.exec(due_watches(now)).all()
        for watch in due:
            slot = watch.next_due_at
            claimed = session.execute(
                update(Watch).where(col(Watch.deployment) == watch.deployment).where(col(Watch.next_due_at) == slot)
                .values(next_due_at=domain.next_due(watch.deployment, watch.interval_s, now))
                .execution_options(synchronize_session=False))
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                out.append(CanaryRequested(run_id=UUID(watch.run_id), causation_id=UUID(watch.promoted_event_id),
                                           deployment=watch.deployment, scheduled=True,
                                           due_at=slot if slot.tzinfo else slot.replace(tzinfo=UTC)))
        return out

    return commit
