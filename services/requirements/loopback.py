"""The loop-back's process manager: the one owner of reroute, rollback, halt and resume.

Per deployment and requirements version it keeps its own state (table `requirements_loop`: the attempts,
their typed endings, the exclusions, the reroute budget, the run in flight, halted or not), and acts on
what happened downstream: a failed canary (live, or before promotion) reroutes into stage 2 with what
failed excluded, commands the registry to roll back a live release (`RollbackCommanded`), or halts; a
reroute that ends without a model halts; an operator's resume gives a fresh budget. Its decisions are the
pure rules of services.requirements.routing; its phases and steps are the table of
services.requirements.machine (docs/loopback.md). It runs inside the requirements service's process,
which owns the requirements versions it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import uuid5

from pydantic import TypeAdapter
from sqlmodel import Session

from weightflow.contracts.base import Event, utcnow
from weightflow.contracts.benchmark import NoCandidatePassed
from weightflow.contracts.fitting import FitFailed
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed
from weightflow.contracts.registry import PromotionSkipped, RollbackCommanded
from weightflow.contracts.requirements import Exclusion, RequirementsAccepted
from weightflow.contracts.tuning import AdapterRefused, TuningSkipped
from weightflow.contracts.workflow import (
    Attempt,
    DeadLettered,
    Ending,
    RequestRefused,
    ResumeRequested,
    WorkflowHalted,
    WorkflowRerouted,
    WorkflowResumed,
)
from weightflow.services.requirements import domain, routing, tables
from weightflow.shared.bus import Commit, HandlerContext, HandlerResult, OrphanError, Service

EXCLUSIONS = TypeAdapter(list[Exclusion])
ATTEMPTS = TypeAdapter(list[Attempt])


def _halt(cause: Event, state: tables.LoopState, current: tables.RequirementsVersion, reason: str) -> WorkflowHalted:
    state.halted = True
    state.in_flight_run_id = None
    exclusions = EXCLUSIONS.validate_json(state.exclusions_json)
    attempts = ATTEMPTS.validate_json(state.attempts_json)
    return WorkflowHalted.follow(
        cause,
        deployment=state.deployment,
        requirements_version=state.version,
        attempts=attempts,
        reason=reason,
        advice=routing.advice(current.context().requirements, exclusions, attempts),
    )


def on_canary_failed(event: CanaryFailed, ctx: HandlerContext) -> HandlerResult:
    """A failed canary (of the live release, or of a release before promotion) re-enters stage 2 with what
    failed excluded, within the reroute budget; when every candidate passed eval and failed the canary set,
    it halts at once instead. A live release that failed is also rolled back, by command to the registry
    (the registry knows which earlier release passed; whether to go back is decided here, once)."""
    command = routing.rollback_of(event)

    def commit(session: Session) -> Sequence[Event]:
        rollback: list[Event] = (
            []
            if command is None
            else [
                RollbackCommanded.follow(
                    event,
                    deployment=event.deployment,
                    failed_manifest_id=event.manifest_id,
                    requirements_version=event.model.requirements_version,
                    kind=command.kind,
                    reason=command.reason,
                )
            ]
        )
        return [*rollback, *route(session)]

    def route(session: Session) -> list[Event]:
        current = tables.latest_version(session, event.deployment)
        if current is None:
            raise OrphanError(f"canary of {event.deployment!r}, a deployment with no accepted requirements")
        state = tables.loop_state(session, event.deployment, current.version)
        context = current.context()
        exclusions = EXCLUSIONS.validate_json(state.exclusions_json)
        attempts = [*ATTEMPTS.validate_json(state.attempts_json), routing.attempt_of(event, context.requirements)]
        decision = routing.on_canary_failure(
            event,
            live_version=current.version,
            reroutes=state.reroutes,
            max_reroutes=context.requirements.monitoring.max_reroutes,
            halted=state.halted,
            in_flight=state.in_flight_run_id,
            exclusions=exclusions,
            candidates=[c.key for c in context.candidates],
            attempts=attempts,
        )
        if isinstance(decision, routing.Ignore):
            return []
        state.attempts_json = ATTEMPTS.dump_json(attempts).decode()
        state.updated_at = utcnow()
        if isinstance(decision, routing.Halt):
            state.exclusions_json = EXCLUSIONS.dump_json(routing.with_failure(exclusions, event)).decode()
            halted = _halt(event, state, current, decision.reason)
            session.add(state)
            return [halted]
        new_run = uuid5(event.event_id, "reroute")
        state.reroutes = decision.attempt
        state.in_flight_run_id = str(new_run)
        state.exclusions_json = EXCLUSIONS.dump_json(decision.exclusions).decode()
        session.add(state)
        session.add(
            tables.RunRow(
                run_id=str(new_run), deployment=event.deployment, version=current.version, attempt=decision.attempt
            )
        )
        rerouted_context = context.model_copy(update={"attempt": decision.attempt, "exclusions": decision.exclusions})
        markdown = domain.render_markdown(context.requirements, context.version, context.requirements_digest)
        max_reroutes = context.requirements.monitoring.max_reroutes
        return [
            WorkflowRerouted.follow(
                event,
                deployment=event.deployment,
                from_stage=routing.from_stage(event),
                to_stage="benchmark",
                reason="; ".join(event.reasons),
                new_run_id=new_run,
                attempt=decision.attempt,
                max_reroutes=max_reroutes,
                failed=routing.exclusion(event),
            ),
            RequirementsAccepted.follow(
                event,
                run_id=new_run,
                context=rerouted_context,
                reroute_of=event.run_id,
                markdown_digest=ctx.store.put_bytes(markdown.encode()),
            ),
        ]

    # One routing decision per canary that ran (its request is the cause): a replay reroutes nothing more.
    return ctx.once(f"canary:{event.causation_id or event.event_id}", event, commit)


def on_canary_passed(event: CanaryPassed, ctx: HandlerContext) -> HandlerResult:
    """The manifest a reroute produced passed its canary: the loop-back converged."""

    def commit(session: Session) -> Sequence[Event]:
        _close(session, str(event.manifest_run_id), "canary passed")
        return []

    return commit


def _close(session: Session, run_id: str, outcome: str) -> tables.LoopState | None:
    row = session.get(tables.RunRow, run_id)
    if row is not None and row.open:
        row.open, row.outcome = False, outcome
        session.add(row)
    state = tables.open_reroute(session, run_id)
    if state is not None:
        state.in_flight_run_id = None
        state.updated_at = utcnow()
        session.add(state)
    return state


def _run_failed(event: Event, ending: Ending, reason: str) -> Commit:
    """A run ended without a model: a reroute that does so halts the loop (nothing better was found)."""

    def commit(session: Session) -> Sequence[Event]:
        state = _close(session, str(event.run_id), reason)
        if state is None:
            return []  # a submitted run (or one already closed): its own events tell the operator
        current = tables.latest_version(session, state.deployment)
        if current is None or current.version != state.version:
            return []
        attempts = [
            *ATTEMPTS.validate_json(state.attempts_json),
            Attempt(run_id=event.run_id, reason=reason, ending=ending),
        ]
        state.attempts_json = ATTEMPTS.dump_json(attempts).decode()
        halted = _halt(event, state, current, f"reroute attempt {state.reroutes} found no model: {reason}")
        session.add(state)
        return [halted]

    return commit


def on_no_candidate(event: NoCandidatePassed, ctx: HandlerContext) -> HandlerResult:
    """Closes a reroute that found no candidate."""
    return _run_failed(event, Ending.NO_CANDIDATE, "no candidate passed: " + event.recommendation.reason)


def on_fit_failed(event: FitFailed, ctx: HandlerContext) -> HandlerResult:
    """Closes a reroute whose model could not be fitted."""
    return _run_failed(event, Ending.FIT_FAILED, "fit failed: " + event.reason)


def on_tuning_skipped(event: TuningSkipped, ctx: HandlerContext) -> HandlerResult:
    """Closes a reroute that needed tuning it could not do."""
    return _run_failed(event, Ending.TUNING_IMPOSSIBLE, "tuning impossible: " + event.reason)


def on_adapter_refused(event: AdapterRefused, ctx: HandlerContext) -> HandlerResult:
    """Closes a reroute whose adapter failed its gate (a passed gate is a TuningGated, which goes to the registry)."""
    return _run_failed(event, Ending.ADAPTER_REFUSED, "adapter refused: " + "; ".join(event.verdict.messages()))


def on_promotion_skipped(event: PromotionSkipped, ctx: HandlerContext) -> HandlerResult:
    """Closes a run whose manifest must not go live."""
    return _run_failed(event, Ending.NOT_PROMOTED, "not promoted: " + event.reason)


def on_dead_lettered(event: DeadLettered, ctx: HandlerContext) -> HandlerResult:
    """Closes a reroute whose work was dead-lettered (the letter names the run when it could be read)."""
    return _run_failed(
        event, Ending.DEAD_LETTERED, f"dead-lettered by {event.service} ({event.reason}): {event.error[:200]}"
    )


def on_resume(event: ResumeRequested, ctx: HandlerContext) -> HandlerResult:
    """An operator resumes a halted deployment: a fresh reroute budget (exclusions stay: they are facts)."""

    def commit(session: Session) -> Sequence[Event]:
        current = tables.latest_version(session, event.deployment)
        if current is None:
            return [
                RequestRefused.follow(
                    event,
                    request=event.type_name(),
                    deployment=event.deployment,
                    reason=f"deployment {event.deployment!r} has no accepted requirements",
                )
            ]
        state = tables.loop_state(session, event.deployment, current.version)
        if not state.halted:
            return [
                RequestRefused.follow(
                    event,
                    request=event.type_name(),
                    deployment=event.deployment,
                    reason=f"{event.deployment!r} is not halted (v{current.version}, {state.reroutes} reroute(s) used)",
                )
            ]
        state.halted, state.reroutes, state.updated_at = False, 0, utcnow()
        session.add(state)
        return [WorkflowResumed.follow(event, deployment=event.deployment, requirements_version=current.version)]

    return ctx.once(f"resume:{event.run_id}", event, commit)  # an operator's request is its own run


def register(service: Service) -> None:
    """Attach the loop-back's handlers to the service whose process runs it."""
    service.handles(CanaryFailed, requires_run=False)(on_canary_failed)
    service.handles(CanaryPassed, requires_run=False)(on_canary_passed)
    service.handles(NoCandidatePassed, requires_run=False)(on_no_candidate)
    service.handles(FitFailed, requires_run=False)(on_fit_failed)
    service.handles(TuningSkipped, requires_run=False)(on_tuning_skipped)
    service.handles(AdapterRefused, requires_run=False)(on_adapter_refused)
    service.handles(PromotionSkipped, requires_run=False)(on_promotion_skipped)
    service.handles(DeadLettered, requires_run=False)(on_dead_lettered)
    service.handles(ResumeRequested, requires_run=False)(on_resume)
