"""The loop-back's state machine, declared once: per deployment and requirements version, which phase it is
in, what moves it, and what it emits on the way.

The table is the reference the decisions are tested against (tests/unit/test_loopback_machine.py runs each canary
row through the pure rules in services.requirements.routing) and the source of the diagram in docs/loopback.md
(`python -m weightflow.services.requirements.machine > docs/loopback.md`; a test checks the committed page is current).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """Where one deployment's loop-back stands under one requirements version (the `requirements_loop` row)."""

    WATCHING = "watching"  # no reroute in flight, not halted: the live release (if any) is watched
    REROUTING = "rerouting"  # one reroute run is in flight (`in_flight_run_id`)
    HALTED = "halted"  # waiting for an operator: `weightflow resume` or `weightflow change`


class Trigger(StrEnum):
    LIVE_CANARY_FAILED = "live canary failed"
    FAILED_BEFORE_PROMOTION = "canary failed before promotion"
    OUTAGE = "canary unreachable"
    CANARY_PASSED = "canary passed"
    RUN_ENDED_WITHOUT_MODEL = "reroute ended without a model"
    RESUME_REQUESTED = "resume requested"
    REQUIREMENTS_CHANGED = "requirements changed"


@dataclass(frozen=True)
class Transition:
    source: Phase
    trigger: Trigger
    guard: str
    target: Phase
    emits: tuple[str, ...]


W, R, H = Phase.WATCHING, Phase.REROUTING, Phase.HALTED
T = Trigger
_REROUTE = ("WorkflowRerouted", "RequirementsAccepted")

TRANSITIONS: tuple[Transition, ...] = (
    Transition(W, T.LIVE_CANARY_FAILED, "budget left", R, ("RollbackCommanded", *_REROUTE)),
    Transition(W, T.LIVE_CANARY_FAILED, "budget spent", H, ("RollbackCommanded", "WorkflowHalted")),
    Transition(W, T.FAILED_BEFORE_PROMOTION, "budget left", R, _REROUTE),
    Transition(W, T.FAILED_BEFORE_PROMOTION, "every candidate passed eval, failed canary", H, ("WorkflowHalted",)),
    Transition(R, T.FAILED_BEFORE_PROMOTION, "the reroute's release, budget left", R, _REROUTE),
    Transition(R, T.FAILED_BEFORE_PROMOTION, "every candidate passed eval, failed canary", H, ("WorkflowHalted",)),
    Transition(W, T.FAILED_BEFORE_PROMOTION, "budget spent", H, ("WorkflowHalted",)),
    Transition(R, T.FAILED_BEFORE_PROMOTION, "budget spent", H, ("WorkflowHalted",)),
    Transition(R, T.FAILED_BEFORE_PROMOTION, "another release", R, ()),
    Transition(R, T.LIVE_CANARY_FAILED, "the reroute's release, budget left", R, ("RollbackCommanded", *_REROUTE)),
    Transition(R, T.LIVE_CANARY_FAILED, "budget spent", H, ("RollbackCommanded", "WorkflowHalted")),
    Transition(R, T.LIVE_CANARY_FAILED, "another release", R, ("RollbackCommanded",)),
    Transition(R, T.CANARY_PASSED, "the reroute's release", W, ()),
    Transition(R, T.RUN_ENDED_WITHOUT_MODEL, "", H, ("WorkflowHalted",)),
    Transition(H, T.LIVE_CANARY_FAILED, "", H, ("RollbackCommanded",)),
    Transition(H, T.FAILED_BEFORE_PROMOTION, "", H, ()),
    Transition(H, T.RESUME_REQUESTED, "", W, ("WorkflowResumed",)),
    Transition(W, T.RESUME_REQUESTED, "not halted", W, ("RequestRefused",)),
    Transition(W, T.OUTAGE, "", W, ()),
    Transition(R, T.OUTAGE, "", R, ()),
    Transition(H, T.OUTAGE, "", H, ()),
    Transition(W, T.REQUIREMENTS_CHANGED, "a new version starts watching", W, _REROUTE),
    Transition(R, T.REQUIREMENTS_CHANGED, "a new version starts watching", W, _REROUTE),
    Transition(H, T.REQUIREMENTS_CHANGED, "a new version starts watching", W, _REROUTE),
)


def phase_of(halted: bool, in_flight_run_id: str | None) -> Phase:
    """The phase a `requirements_loop` row is in."""
    if halted:
        return Phase.HALTED
    return Phase.REROUTING if in_flight_run_id is not None else Phase.WATCHING


def mermaid() -> str:
    """The table as a Mermaid state diagram (one edge per row, labelled trigger [guard] / emits)."""
    lines = ["stateDiagram-v2", f"    [*] --> {Phase.WATCHING.value}"]
    for t in TRANSITIONS:
        guard = f" [{t.guard}]" if t.guard else ""
        emits = f" / {', '.join(t.emits)}" if t.emits else ""
        lines.append(f"    {t.source.value} --> {t.target.value}: {t.trigger.value}{guard}{emits}")
    return "\n".join(lines)


def page() -> str:
    """docs/loopback.md, generated."""
    rows = "\n".join(
        f"| {t.source.value} | {t.trigger.value} | {t.guard or '—'} | {t.target.value} | "
        f"{', '.join(f'`{e}`' for e in t.emits) or '—'} |"
        for t in TRANSITIONS
    )
    return f"""# The loop-back's state machine

Generated from `services/requirements/machine.py`
(`python -m weightflow.services.requirements.machine > docs/loopback.md`); `tests/unit/test_loopback_machine.py`
checks this page against the code, and every canary row against the loop-back's decisions
(`services/requirements/routing.py`); the unit lane's workflows (`tests/unit/test_workflow_unit.py`,
`tests/integration/test_pre_promotion_canary.py`) walk the other rows.

One owner decides every loop-back: the process manager in `services/requirements/loopback.py` (it runs in the
requirements service's process) keeps, per deployment and requirements version, the attempts, the
exclusions, the reroute budget and whether it is halted (table `requirements_loop`). It reroutes, halts,
resumes, and commands the registry to roll back (`RollbackCommanded`); the registry only finds the release
to go back to. A release whose registration
baseline fails the canary's rule is never promoted: its `CanaryFailed` (`before_promotion`) comes from the
registry and is rerouted without a rollback.

```mermaid
{mermaid()}
```

| from | trigger | guard | to | emits |
|---|---|---|---|---|
{rows}
"""


if __name__ == "__main__":
    print(page(), end="")
