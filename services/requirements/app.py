"""Requirements service: accepts versioned requirements; its process also runs the loop-back.

Intake is here: validate, version in publish order, accept or reject; changed requirements re-enter
stage 1 then 2 (`WorkflowRerouted` from `requirements.changed`). The loop-back's process manager
(reroute, rollback, halt, resume) is services.requirements.loopback: it runs in this process because it
reads the requirements versions this service owns, but it is its own module with its own state.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from sqlmodel import Session

from weightflow.contracts.base import Event
from weightflow.contracts.requirements import (
    RequirementsAccepted,
    RequirementsChanged,
    RequirementsRejected,
    RequirementsSubmitted,
)
from weightflow.contracts.workflow import WorkflowRerouted
from weightflow.services.requirements import domain, loopback, tables
from weightflow.shared.bus import HandlerContext, HandlerResult, Service

service = Service("requirements")


def _accept(event: RequirementsSubmitted | RequirementsChanged, ctx: HandlerContext) -> HandlerResult:
    """Validate (outside any transaction), then take the next version in publish order, or reject. A run is
    answered once, whatever event id a replay of its submission carries."""
    key = f"accept:{event.run_id}"
    if ctx.done(key):
        return []
    outcome = domain.validate(event, ctx.store)
    if isinstance(outcome, domain.Invalid):
        return ctx.once(key, event, [RequirementsRejected.follow(event, errors=outcome.errors)])
    sequence = ctx.delivery.stream_sequence or 0

    def commit(session: Session) -> Sequence[Event]:
        latest = tables.latest_version(session, outcome.requirements.deployment.name)
        if latest is not None and latest.sequence > sequence:
            return [RequirementsRejected.follow(event, errors=[
                f"superseded: requirements v{latest.version} of {latest.deployment!r} were published after these "
                f"(stream sequence {latest.sequence} > {sequence}); submit again to make these current"])]
        version = 1 if latest is None else latest.version + 1
        context = domain.context(outcome, version)
        session.add(tables.RequirementsVersion(
            deployment=context.requirements.deployment.name, version=version, sequence=sequence,
            run_id=str(event.run_id), digest=context.requirements_digest, document=event.document,
            context_json=context.model_dump_json()))
        session.add(tables.RunRow(run_id=str(event.run_id), deployment=context.requirements.deployment.name,
                                 version=version))
        markdown = domain.render_markdown(context.requirements, version, context.requirements_digest)
        accepted = RequirementsAccepted.follow(event, context=context, warnings=outcome.warnings,
                                               markdown_digest=ctx.store.put_bytes(markdown.encode()))
        if latest is None or not isinstance(event, RequirementsChanged):
            return [accepted]
        reroute = WorkflowRerouted.follow(
            event, run_id=UUID(latest.run_id), deployment=latest.deployment, from_stage="requirements.changed",
            to_stage="requirements", reason=f"requirements changed (v{latest.version} -> v{version})",
            new_run_id=event.run_id)
        return [reroute, accepted]

    return ctx.once(key, event, commit)


@service.handles(RequirementsSubmitted, requires_run=False)
def on_submitted(event: RequirementsSubmitted, ctx: HandlerContext) -> HandlerResult:
    """Validate the document and its data; accept it as the next version, or reject with every error."""
    return _accept(event, ctx)


@service.handles(RequirementsChanged, requires_run=False)
def on_changed(event: RequirementsChanged, ctx: HandlerContext) -> HandlerResult:
    """New requirements for a deployment: a new version (which clears the loop-back's exclusions and
    halt), rerouting its workflow through stage 1 into a new run."""
    return _accept(event, ctx)


loopback.register(service)  # the loop-back's process manager runs in this process
