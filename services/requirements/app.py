"""Requirements service: accepts versioned requirements, and routes loop-backs into a new run.

Routing lives here because this stage owns what a deployment requires: a failed canary re-enters
stage 2 with the deployment's current requirements; changed requirements re-enter stage 1 then 2.
Either way a `WorkflowRerouted` event says why work restarted.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID, uuid5

from contracts.base import Event
from contracts.monitoring import CanaryFailed
from contracts.requirements import (
    DataRefs,
    RequirementsAccepted,
    RequirementsChanged,
    RequirementsRejected,
    RequirementsSubmitted,
    RunContext,
)
from contracts.workflow import WorkflowRerouted
from services.requirements import domain, store
from shared.bus import HandlerContext, Service
from shared.splits import load_split

service = Service("requirements", publishes=(RequirementsAccepted, RequirementsRejected, WorkflowRerouted))


def _accept(event: RequirementsSubmitted | RequirementsChanged, ctx: HandlerContext,
            run_id: UUID) -> list[Event]:
    try:
        req = domain.parse_requirements(event.document)
    except domain.RequirementsError as exc:
        return [RequirementsRejected.follow(event, run_id=run_id, errors=exc.errors)]
    errors = domain.check_data(req, lambda split: list(load_split(ctx.store, split, event.data[split])),
                               event.data)
    if errors:
        return [RequirementsRejected.follow(event, run_id=run_id, errors=errors)]
    digest = domain.requirements_digest(event.document)
    version = store.next_version(ctx.session, req.deployment.name)
    context = RunContext(requirements=req, version=version, requirements_digest=digest,
                         data=DataRefs(**{k: v for k, v in event.data.items() if getattr(req.data, k, None)}))
    markdown = domain.render_markdown(req, version, digest)
    ctx.session.add(store.RequirementsVersion(
        deployment=req.deployment.name, version=version, run_id=str(run_id), digest=digest,
        document=event.document, context_json=context.model_dump_json()))
    ctx.store.put_bytes(event.document.encode())
    markdown_digest = ctx.store.put_bytes(markdown.encode())
    return [RequirementsAccepted.follow(event, run_id=run_id, context=context, markdown_digest=markdown_digest)]


@service.handles(RequirementsSubmitted)
def on_submitted(event: RequirementsSubmitted, ctx: HandlerContext) -> Sequence[Event]:
    """Validate the document and its data; accept it as the next version, or reject with every error."""
    return _accept(event, ctx, event.run_id)


@service.handles(RequirementsChanged)
def on_changed(event: RequirementsChanged, ctx: HandlerContext) -> Sequence[Event]:
    """New requirements for a live deployment: reroute its workflow through stage 1 into a new run."""
    previous = store.latest_for(ctx.session, event.deployment)
    outcome = _accept(event, ctx, event.run_id)
    if previous is None or not isinstance(outcome[0], RequirementsAccepted):
        return outcome
    reroute = WorkflowRerouted.follow(
        event, run_id=UUID(previous.run_id), deployment=event.deployment, from_stage="requirements.changed",
        to_stage="requirements", reason=f"requirements changed (v{previous.version} -> v{previous.version + 1})",
        new_run_id=event.run_id)
    return [reroute, *outcome]


@service.handles(CanaryFailed)
def on_canary_failed(event: CanaryFailed, ctx: HandlerContext) -> Sequence[Event]:
    """A failed canary sends the deployment back to selection (stage 2) under its current requirements."""
    current = store.latest_for(ctx.session, event.deployment)
    if current is None:
        return []
    new_run = uuid5(event.event_id, "reroute")
    context = store.context_of(current)
    ctx.session.add(store.RequirementsVersion(
        deployment=current.deployment, version=current.version, run_id=str(new_run), digest=current.digest,
        document=current.document, context_json=current.context_json))
    markdown = domain.render_markdown(context.requirements, context.version, context.requirements_digest)
    return [
        WorkflowRerouted.follow(event, deployment=event.deployment, from_stage="monitoring.canary_failed",
                                to_stage="benchmark", reason="; ".join(event.reasons), new_run_id=new_run),
        RequirementsAccepted.follow(event, run_id=new_run, context=context,
                                    markdown_digest=ctx.store.put_bytes(markdown.encode())),
    ]
