"""Which events belong on a page: a run followed across its reroutes, or a deployment's whole history.

A run's own events are not its whole story: the canaries that later watch the release it registered carry
their own run ids (the schedule's or an operator's), so they are joined by the manifest's run; rollbacks,
drift and halts of the same deployment after the run started are joined by the deployment's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from weightflow.client import RunTracker
from weightflow.contracts.base import Event
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, DriftDetected
from weightflow.contracts.registry import DeploymentPromoted, ModelRegistered, RolledBack
from weightflow.contracts.requirements import RequirementsAccepted
from weightflow.contracts.workflow import WorkflowHalted, WorkflowResumed

# Events that name a deployment and belong to its history whichever run id they carry.
DEPLOYMENT_EVENTS = (
    CanaryPassed,
    CanaryFailed,
    DriftDetected,
    RolledBack,
    WorkflowHalted,
    WorkflowResumed,
    DeploymentPromoted,
    ModelRegistered,
)


def deployment_of(events: Sequence[Event]) -> str | None:
    """The deployment these events are about: the first accepted requirements' (None before acceptance)."""
    for e in events:
        if isinstance(e, RequirementsAccepted):
            return e.context.requirements.deployment.name
    return None


def run_scope(events: Sequence[Event], run_id: UUID) -> tuple[list[Event], str]:
    """One run's events (across its reroutes), the canaries of what it registered, and its deployment's
    rollbacks, drift and halts from its start until the next run of that deployment starts (a later version's
    halt is that run's story), in stream order; with the run's outcome ("in progress" until it ends)."""
    tracker = RunTracker({run_id})
    for e in events:
        tracker.feed(e)
    own = {e.event_id for e in tracker.events}
    deployment = deployment_of(tracker.events)
    if deployment is None or not tracker.events:
        return list(tracker.events), tracker.outcome or "in progress"
    started = tracker.events[0].occurred_at
    ended = next(
        (
            e.occurred_at
            for e in events
            if isinstance(e, RequirementsAccepted)
            and e.run_id not in tracker.run_ids
            and not e.context.attempt
            and e.occurred_at > started
            and e.context.requirements.deployment.name == deployment
        ),
        None,
    )

    def belongs(e: Event) -> bool:
        if e.event_id in own:
            return True
        if isinstance(e, CanaryPassed | CanaryFailed) and e.manifest_run_id in tracker.run_ids:
            return True  # its release, watched (also after a rollback to it)
        return (
            isinstance(e, DEPLOYMENT_EVENTS)
            and not isinstance(e, DeploymentPromoted | ModelRegistered)
            and getattr(e, "deployment", None) == deployment
            and started <= e.occurred_at
            and (ended is None or e.occurred_at < ended)
        )

    return [e for e in events if belongs(e)], tracker.outcome or "in progress"


def deployment_scope(events: Sequence[Event], name: str) -> list[Event]:
    """Every event of every run that targeted deployment `name`, and everything that names it, in order."""
    runs: set[UUID] = set()
    picked: list[Event] = []
    for e in events:
        if isinstance(e, RequirementsAccepted) and e.context.requirements.deployment.name == name:
            runs.add(e.run_id)
        if e.run_id in runs or getattr(e, "deployment", None) == name:
            picked.append(e)
    return picked


def deployments(events: Sequence[Event]) -> list[str]:
    """Deployment names in the order they were first accepted."""
    seen: dict[str, None] = {}
    for e in events:
        if isinstance(e, RequirementsAccepted):
            seen.setdefault(e.context.requirements.deployment.name, None)
    return list(seen)
