"""The loop-back's state machine: the committed diagram is the code's table, and every canary row of the table
is what the loop-back's pure rules decide."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest

from weightflow.contracts.monitoring import CanaryFailed, DeployedModel
from weightflow.contracts.verdict import Miss, Verdict
from weightflow.contracts.workflow import Attempt, Ending
from weightflow.services.requirements import machine, routing
from weightflow.services.requirements.machine import Phase, Transition, Trigger

from ..integration.test_pre_promotion_canary import _measured

ROOT = Path(__file__).resolve().parents[2]
CANARY_TRIGGERS = (Trigger.LIVE_CANARY_FAILED, Trigger.FAILED_BEFORE_PROMOTION, Trigger.OUTAGE)


def test_the_committed_state_machine_page_is_the_code() -> None:
    committed = (ROOT / "docs" / "loopback.md").read_text()
    assert committed == machine.page(), (
        "docs/loopback.md is stale: python -m weightflow.services.requirements.machine > docs/loopback.md"
    )
    assert machine.mermaid().startswith("stateDiagram-v2") and "```mermaid" in committed


def test_every_phase_is_reached_and_left() -> None:
    for phase in Phase:
        assert any(t.target == phase for t in machine.TRANSITIONS), phase
        assert any(t.source == phase and t.target != phase for t in machine.TRANSITIONS), phase
    assert machine.phase_of(False, None) == Phase.WATCHING and machine.phase_of(False, "r") == Phase.REROUTING
    assert machine.phase_of(True, "r") == Phase.HALTED


def _decide(t: Transition) -> tuple[routing.Reroute | routing.Halt | routing.Ignore, bool]:
    """Build the inputs a row describes, and return what the loop-back decides and whether it rolls back."""
    run = uuid4()
    before = t.trigger == Trigger.FAILED_BEFORE_PROMOTION
    event = CanaryFailed(
        run_id=run,
        deployment="d",
        manifest_id="m-a",
        manifest_run_id=run,
        model=DeployedModel(candidate="a", variant="int8", requirements_version=1),
        kind="unreachable" if t.trigger == Trigger.OUTAGE else "quality",
        verdict=Verdict(misses=[Miss(kind="quality", observed=0.3, limit=0.8, detail="canary accuracy")]),
        measurement=_measured(0.3),
        before_promotion=before,
        eval_measurement=_measured(0.95) if before else None,
    )
    disagrees = "every candidate" in t.guard
    attempts = [
        Attempt(
            run_id=run,
            candidate="a",
            reason="r",
            ending=Ending.FAILED_BEFORE_PROMOTION,
            canary_disagrees_with_eval=disagrees,
        )
    ]
    in_flight = None
    if t.source == Phase.REROUTING:
        in_flight = str(uuid4()) if t.guard == "another release" else str(run)
    decision = routing.on_canary_failure(
        event,
        live_version=1,
        reroutes=3 if "budget spent" in t.guard else 0,
        max_reroutes=3,
        halted=t.source == Phase.HALTED,
        in_flight=in_flight,
        exclusions=[],
        candidates=["a"] if disagrees else ["a", "b"],
        attempts=attempts,
    )
    return decision, routing.rollback_of(event) is not None


@pytest.mark.parametrize(
    "t",
    [t for t in machine.TRANSITIONS if t.trigger in CANARY_TRIGGERS],
    ids=lambda t: f"{t.source}-{t.trigger}-{t.guard or 'always'}".replace(" ", "_"),
)
def test_each_canary_row_is_what_the_loop_back_decides(t: Transition) -> None:
    decision, rolls_back = _decide(t)
    if t.target == Phase.HALTED and t.source != Phase.HALTED:
        assert isinstance(decision, routing.Halt), decision
    elif "WorkflowRerouted" in t.emits:
        assert isinstance(decision, routing.Reroute), decision
    else:
        assert isinstance(decision, routing.Ignore), decision
    assert rolls_back == ("RollbackCommanded" in t.emits)
