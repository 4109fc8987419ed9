"""What the UI's front page lists, from the events alone: runs with their state, deployments (live manifest,
last canary, halted or not), dead letters and halts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from weightflow.client import describe_state, run_state, runs_of
from weightflow.contracts.base import Event
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed
from weightflow.contracts.registry import DeploymentPromoted, RolledBack
from weightflow.contracts.requirements import RequirementsAccepted
from weightflow.contracts.workflow import DeadLettered, WorkflowHalted, WorkflowResumed
from weightflow.pages.scope import deployment_of, deployments
from weightflow.render import summary


@dataclass(frozen=True)
class RunRow:
    run_id: str
    started: datetime
    deployment: str
    events: int
    state: str
    tone: str


@dataclass(frozen=True)
class DeploymentRow:
    name: str
    live_manifest: str | None
    last_canary: str
    canary_tone: str
    halted: bool


def run_rows(events: Sequence[Event]) -> list[RunRow]:
    """Runs, newest first."""
    rows = []
    for run_id, evs in runs_of(events).items():
        state = run_state(run_id, evs)
        tone = {"succeeded": "good", "failed": "bad"}.get(state[0], "neutral")
        rows.append(
            RunRow(str(run_id), evs[0].occurred_at, deployment_of(evs) or "—", len(evs), describe_state(state), tone)
        )
    return rows[::-1]


def deployment_rows(events: Sequence[Event]) -> list[DeploymentRow]:
    rows = []
    for name in deployments(events):
        live: str | None = None
        canary, tone, halted = "none yet", "neutral", False
        for e in events:
            if getattr(e, "deployment", None) != name and not (
                isinstance(e, RequirementsAccepted) and e.context.requirements.deployment.name == name
            ):
                continue
            if isinstance(e, DeploymentPromoted):
                live = e.manifest_id
            elif isinstance(e, RolledBack):
                live = e.to_manifest_id
            elif isinstance(e, CanaryPassed | CanaryFailed) and not getattr(e, "before_promotion", False):
                # a release refused before promotion never served: the live one's last canary still stands
                canary = f"{e.occurred_at:%Y-%m-%d %H:%M:%S} {summary(e)}"
                tone = "good" if isinstance(e, CanaryPassed) else "bad"
            elif isinstance(e, WorkflowHalted):
                halted = True
            elif isinstance(e, WorkflowResumed) or (isinstance(e, RequirementsAccepted) and not e.context.attempt):
                halted = False  # resumed, or new requirements: the halt is behind it
        rows.append(DeploymentRow(name, live, canary, tone, halted))
    return rows


def dead_letters(events: Sequence[Event]) -> list[DeadLettered]:
    return [e for e in events if isinstance(e, DeadLettered)][::-1]


def halts(events: Sequence[Event]) -> list[WorkflowHalted]:
    return [e for e in events if isinstance(e, WorkflowHalted)][::-1]
