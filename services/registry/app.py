"""Registry service: pins every artifact of a passing model in a manifest, promotes it, rolls back.

At registration the canary set is run once on the exact model being pinned; that baseline goes into
the manifest, and every later canary is judged against it. The baseline is also a canary before going
live: a release whose baseline already fails the canary's rule (shared.canary) is registered but not
promoted (the live release keeps serving), and its `CanaryFailed` (`before_promotion`) goes to the
loop-back as a live canary's would.

Under `deployment.promotion: manual` a release that would go live waits instead (`PromotionAwaitingApproval`,
with the evidence) until a person approves or rejects it; an approval promotes through the same `_promote`
as the automatic path. Which releases wait and which were decided are effect keys (`awaiting:` and `decided:`
with the manifest id), so a decision is taken once whatever replays or repeats it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from uuid import UUID

from sqlmodel import Session, select

from weightflow.contracts.base import Event, utcnow
from weightflow.contracts.benchmark import UNQUANTIZED, ModelArtifact
from weightflow.contracts.fitting import FitCompleted, MemoryBudget
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, DeployedModel
from weightflow.contracts.registry import (
    DeploymentPromoted,
    Manifest,
    ManifestEntry,
    ModelRegistered,
    PromotionApproved,
    PromotionAwaitingApproval,
    PromotionDecided,
    PromotionRejected,
    PromotionSkipped,
    RollbackCommanded,
    RollbackRequested,
    RolledBack,
)
from weightflow.contracts.requirements import RequirementsAccepted, RunContext
from weightflow.contracts.tuning import AdapterArtifact, TuningGated
from weightflow.contracts.workflow import RequestRefused
from weightflow.services.registry import domain
from weightflow.services.registry.tables import DeploymentRecord, ManifestRecord
from weightflow.shared.artifacts import IntegrityError
from weightflow.shared.bus import HandlerContext, HandlerResult, OrphanError, Service
from weightflow.shared.canary import judge_canary
from weightflow.shared.db import EffectRecord
from weightflow.shared.modeling import placement
from weightflow.shared.modeling.stored import measure, rows, task_of

service = Service("registry")


def _entry(ctx: HandlerContext, tree: str) -> ManifestEntry:
    return ManifestEntry(tree_digest=tree, files=ctx.store.tree_files(tree))


def _verified(ctx: HandlerContext, trees: list[str]) -> None:
    for tree in trees:
        if not ctx.store.exists(tree):
            raise OrphanError(f"artifact tree {tree} is not in the store: the event refers to work that was never "
                              "stored here")
        for digest in ctx.store.tree_files(tree).values():
            ctx.store.verify(digest)


def _canary_baseline(ctx: HandlerContext, context: RunContext, model: ModelArtifact,
                     adapter: AdapterArtifact | None) -> Measurement:
    req = context.requirements
    return measure(ctx.store, model.source, model.tree_digest, req,
                   rows(ctx.store, context.data.canary, task_of(req.task), "canary"),
                   confidence=req.monitoring.confidence,
                   adapter_tree=adapter.tree_digest if adapter else None,
                   adapter_method=adapter.method if adapter else "lora", device=ctx.settings.device)


def awaiting_key(manifest_id: str) -> str:
    return f"awaiting:{manifest_id}"


def decided_key(manifest_id: str) -> str:
    return f"decided:{manifest_id}"


def _promote(cause: Event, session: Session, deployment: str, manifest_id: str, version: int,
             failed_canary: CanaryFailed | None, hold: PromotionAwaitingApproval | None = None) -> Event:
    """Promote, or say why not: superseded requirements (`PromotionSkipped`), a registration baseline that
    failed the canary's rule (`failed_canary`, which the loop-back answers; the live release stays), or manual
    promotion (`hold`: the release is marked awaiting and waits for a person's decision)."""
    record = session.get(DeploymentRecord, deployment) or DeploymentRecord(name=deployment)
    live = record.live
    live_version = None
    if live is not None:
        live_row = session.get(ManifestRecord, live)
        live_version = live_row.requirements_version if live_row else None
    refusal = domain.promotable(version, live_version, record.latest_version)
    if refusal is not None:
        session.add(record)
        return PromotionSkipped.follow(cause, deployment=deployment, manifest_id=manifest_id, reason=refusal)
    if failed_canary is not None:
        return failed_canary
    if hold is not None:
        session.add(EffectRecord(service=service.name, key=awaiting_key(manifest_id), event_id=str(cause.event_id),
                                 run_id=str(cause.run_id)))
        return hold
    releases = [*record.releases, manifest_id]
    record.releases_json, record.position, record.updated_at = json.dumps(releases), len(releases) - 1, utcnow()
    record.latest_version = max(record.latest_version, version)
    session.add(record)
    return DeploymentPromoted.follow(cause, deployment=deployment, manifest_id=manifest_id,
                                     requirements_version=version, previous_manifest_id=live)


def registration_key(run_id: UUID) -> str:
    """A run makes one fit decision (benchmark selects once per accepted run, fitting completes once per
    selection), so it registers at most one manifest, whichever of FitCompleted or TuningGated brings it
    and whatever event id a replay carries."""
    return f"register:{run_id}"


def _registered(ctx: HandlerContext, run_id: UUID) -> bool:
    """Registered already: by the key, or (a database from before the key) by a manifest of the run."""
    if ctx.done(registration_key(run_id)):
        return True
    return ctx.read(lambda s: s.exec(select(ManifestRecord).where(ManifestRecord.run_id == str(run_id))).first()
                    is not None)


def _scheme(variant: str) -> str | None:
    scheme = placement.scheme_of(variant)
    return None if scheme == UNQUANTIZED else scheme


def _sharding(ctx: HandlerContext, tree_digest: str) -> str:
    """What the manifest says of the weights' placement: fitting's offload writes it into the tree."""
    digest = ctx.store.tree_files(tree_digest).get(placement.PLACEMENT_FILE)
    if digest is None:
        return "single-device"
    return placement.Placement.model_validate_json(ctx.store.read_bytes(digest)).describe()


def _register(cause: Event, ctx: HandlerContext, context: RunContext, model: ModelArtifact,
              measurement: Measurement, budget: MemoryBudget, adapter: AdapterArtifact | None) -> HandlerResult:
    if _registered(ctx, cause.run_id):
        return []
    _verified(ctx, [t for t in (model.tree_digest, model.base_tree_digest, adapter.tree_digest if adapter else None)
                    if t])
    baseline = _canary_baseline(ctx, context, model, adapter)
    deployment = context.requirements.deployment.name
    live = ctx.read(lambda s: (s.get(DeploymentRecord, deployment) or DeploymentRecord(name=deployment)).live)
    manifest = Manifest(
        deployment=deployment, run_id=str(cause.run_id), created_at=cause.occurred_at.isoformat(),
        requirements_digest=context.requirements_digest, requirements_version=context.version,
        requirements=context.requirements, data=context.data, candidate=model.candidate, source=model.source,
        params=model.params, base=_entry(ctx, model.base_tree_digest), variant=model.variant,
        quantization=_scheme(model.variant), model=_entry(ctx, model.tree_digest),
        adapter=_entry(ctx, adapter.tree_digest) if adapter else None,
        sharding=_sharding(ctx, model.tree_digest),
        adapter_train_data_digest=adapter.train_data_digest if adapter else None,
        adapter_settings=adapter.settings if adapter else None,
        measurement=measurement, canary_baseline=baseline, budget=budget, previous_manifest_id=live)
    manifest_id = ctx.store.put_bytes(manifest.model_dump_json(indent=2).encode(), suffix_hint=".json")
    runbook_digest = ctx.store.put_bytes(domain.render_runbook(manifest, manifest_id).encode())
    registered = ModelRegistered.follow(cause, manifest_id=manifest_id, deployment=deployment,
                                        requirements_version=context.version, checksums=manifest.checksums(),
                                        runbook_digest=runbook_digest, canary_baseline=baseline)
    # The baseline judged as the live canary would judge it (no earlier baseline to fall from).
    judgement = judge_canary(baseline, context.requirements, None)
    failed_canary = None if judgement.passed else CanaryFailed.follow(
        cause, deployment=deployment, manifest_id=manifest_id, manifest_run_id=cause.run_id,
        model=DeployedModel(candidate=model.candidate, variant=model.variant,
                            adapter_digest=adapter.tree_digest if adapter else None,
                            requirements_version=context.version),
        kind=judgement.kind, verdict=judgement.verdict, measurement=baseline, before_promotion=True,
        eval_measurement=measurement)
    hold = PromotionAwaitingApproval.follow(
        cause, deployment=deployment, manifest_id=manifest_id, requirements_version=context.version,
        measurement=measurement, canary_baseline=baseline, live_manifest_id=live,
    ) if context.requirements.deployment.promotion == "manual" else None

    def commit(session: Session) -> Sequence[Event]:
        if session.get(ManifestRecord, manifest_id) is None:
            session.add(ManifestRecord(manifest_id=manifest_id, deployment=deployment, run_id=str(cause.run_id),
                                       runbook_digest=runbook_digest, requirements_version=context.version))
        return [registered, _promote(cause, session, deployment, manifest_id, context.version, failed_canary, hold)]

    return ctx.once(registration_key(cause.run_id), cause, commit)


@service.handles(FitCompleted)
def on_fit_completed(event: FitCompleted, ctx: HandlerContext) -> HandlerResult:
    """A fitted model that fitting routed here (no quality gap) is registered as is. Fits that need tuning are
    FitNeedsTuning, another subject; the check stays for a fitting service of an earlier release, which sent
    every fit here with `next_stage` saying where it was meant to go."""
    if event.next_stage != "registry":
        return []
    return _register(event, ctx, event.context, event.model, event.measurement, event.budget, None)


@service.handles(TuningGated)
def on_tuning_gated(event: TuningGated, ctx: HandlerContext) -> HandlerResult:
    """A tuned model that passed its gate is registered with its adapter and training-data hash. A refused one is
    an AdapterRefused, another subject; the check stays for a tuning service of an earlier release."""
    if not event.passed:
        return []
    return _register(event, ctx, event.context, event.model, event.measurement, event.budget, event.adapter)


@service.handles(RequirementsAccepted)
def on_requirements_accepted(event: RequirementsAccepted, ctx: HandlerContext) -> HandlerResult:
    """Remember the newest requirements version, so a late run of an older one is not promoted."""
    name = event.context.requirements.deployment.name

    def commit(session: Session) -> Sequence[Event]:
        record = session.get(DeploymentRecord, name) or DeploymentRecord(name=name)
        record.latest_version = max(record.latest_version, event.context.version)
        session.add(record)
        return []

    return commit


def _decide(event: PromotionApproved | PromotionRejected, ctx: HandlerContext) -> HandlerResult:
    """A person's decision on a release awaiting approval, taken once: anything else is refused, saying why."""
    approve = isinstance(event, PromotionApproved)

    def refuse(reason: str) -> list[Event]:
        return [RequestRefused.follow(event, request=event.type_name(), deployment=event.deployment, reason=reason)]

    def commit(session: Session) -> Sequence[Event]:
        short = event.manifest_id[:12]
        row = session.get(ManifestRecord, event.manifest_id)
        if row is None or row.deployment != event.deployment:
            return refuse(f"manifest {short} is not a registered release of {event.deployment!r}; see "
                          "`weightflow registry ls`")
        prior = session.get(EffectRecord, (service.name, decided_key(event.manifest_id)))
        if prior is not None:
            return refuse(f"manifest {short} was decided already (event {prior.event_id}); see "
                          f"`weightflow history {event.deployment}`")
        if session.get(EffectRecord, (service.name, awaiting_key(event.manifest_id))) is None:
            record = session.get(DeploymentRecord, event.deployment)
            where = ("it was promoted" if record is not None and event.manifest_id in record.releases
                     else "it was kept from going live")
            return refuse(f"manifest {short} is not awaiting approval ({where}; only a release registered under "
                          f"`deployment.promotion: manual` waits); see `weightflow history {event.deployment}`")
        session.add(EffectRecord(service=service.name, key=decided_key(event.manifest_id),
                                 event_id=str(event.event_id), run_id=str(event.run_id)))
        decided = PromotionDecided.follow(event, deployment=event.deployment, manifest_id=event.manifest_id,
                                          decision="approved" if approve else "rejected",
                                          decided_by=event.decided_by, reason=event.reason,
                                          decision_event_id=str(event.event_id))
        if not approve:
            return [decided]
        return [decided, _promote(event, session, event.deployment, event.manifest_id, row.requirements_version,
                                  None)]

    return commit


@service.handles(PromotionApproved, requires_run=False)
def on_promotion_approved(event: PromotionApproved, ctx: HandlerContext) -> HandlerResult:
    """Approve: promote the waiting release as the automatic path would (superseded requirements still skip it)."""
    return _decide(event, ctx)


@service.handles(PromotionRejected, requires_run=False)
def on_promotion_rejected(event: PromotionRejected, ctx: HandlerContext) -> HandlerResult:
    """Reject: record who and why; the live release keeps serving."""
    return _decide(event, ctx)


def _moved(cause: Event, session: Session, record: DeploymentRecord, target: domain.Target, *, automatic: bool,
           reason: str) -> list[Event]:
    current = record.live
    assert current is not None
    to_row = session.get(ManifestRecord, target.manifest_id)
    to_version = to_row.requirements_version if to_row else 0
    record.position, record.updated_at = target.position, utcnow()
    session.add(record)
    rolled = RolledBack.follow(cause, deployment=record.name, from_manifest_id=current,
                               to_manifest_id=target.manifest_id, automatic=automatic, reason=reason,
                               to_requirements_version=to_version, live_requirements_version=record.latest_version)
    return [rolled, DeploymentPromoted.follow(cause, deployment=record.name, manifest_id=target.manifest_id,
                                              requirements_version=to_version, previous_manifest_id=current)]


@service.handles(RollbackRequested, requires_run=False)
def on_rollback(event: RollbackRequested, ctx: HandlerContext) -> HandlerResult:
    """An operator's rollback: to the release before the live one, or to a named release."""

    def refuse(reason: str) -> list[Event]:
        return [RequestRefused.follow(event, request=event.type_name(), deployment=event.deployment, reason=reason)]

    def commit(session: Session) -> Sequence[Event]:
        record = session.get(DeploymentRecord, event.deployment)
        if record is None or record.live is None:
            return refuse(f"deployment {event.deployment!r} has never been promoted; see `weightflow registry ls`")

        def owner(manifest_id: str) -> str | None:
            row = session.get(ManifestRecord, manifest_id)
            return row.deployment if row else None

        target = domain.rollback_target(event.deployment, record.releases, record.position, event.to_manifest_id,
                                        owner)
        if isinstance(target, domain.Refused):
            return refuse(target.reason)
        return _moved(event, session, record, target, automatic=False, reason="requested by an operator")

    # An operator's request is its own run: a replay of it under a fresh event id rolls back nothing more.
    return ctx.once(f"rollback:{event.run_id}", event, commit)


@service.handles(CanaryPassed, requires_run=False)
def on_canary_passed(event: CanaryPassed, ctx: HandlerContext) -> HandlerResult:
    """A release that passed its canary is a safe place to roll back to."""

    def commit(session: Session) -> Sequence[Event]:
        row = session.get(ManifestRecord, event.manifest_id)
        if row is None or row.deployment != event.deployment:
            raise OrphanError(f"canary result for manifest {event.manifest_id[:12]}, which is not a registered "
                              f"release of {event.deployment!r}")
        if not row.canary_passed:
            row.canary_passed = True
            session.add(row)
        return []

    return commit


@service.handles(RollbackCommanded, requires_run=False)
def on_rollback_commanded(event: RollbackCommanded, ctx: HandlerContext) -> HandlerResult:
    """Keep serving a good model, on the loop-back's command: the live release failed its canary, so go back to
    the newest earlier one that passed its canary under the same requirements version (an integrity failure
    also checks its files). Whether to roll back is the loop-back's decision; where to is the registry's."""

    def intact(manifest_id: str) -> bool:
        try:
            for digest in Manifest.model_validate(ctx.store.read_json(manifest_id)).checksums().values():
                ctx.store.verify(digest)
        except (IntegrityError, OSError, ValueError):
            return False
        return True

    # Files are hashed before the transaction opens (hashing is slow next to a row update).
    releases = ctx.read(lambda s: (s.get(DeploymentRecord, event.deployment) or DeploymentRecord(name="")).releases)
    verified = {m: intact(m) for m in set(releases)} if event.kind == "integrity" else {}

    def good(manifest_id: str, session: Session) -> bool:
        row = session.get(ManifestRecord, manifest_id)
        if row is None or not row.canary_passed or row.requirements_version != event.requirements_version:
            return False
        return verified.get(manifest_id, False) if event.kind == "integrity" else True

    def commit(session: Session) -> Sequence[Event]:
        record = session.get(DeploymentRecord, event.deployment)
        if record is None or record.live != event.failed_manifest_id:
            return []  # not live any more: already rolled back or replaced
        target = domain.last_good(record.releases, record.position, lambda m: good(m, session))
        if target is None:
            return []
        return _moved(event, session, record, target, automatic=True, reason=event.reason)

    return commit
