"""Manual promotion (issue 23, part 5): under `deployment.promotion: manual` the registry holds a release that
would go live, with its evidence, until a person approves (promoted as the automatic path would) or rejects it
(the live release keeps serving); any other decision is refused with its reason. The unit lane: six services'
real handlers in process, tiny real checkpoints, scripted scores."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID, uuid4

import pytest
from typer.testing import CliRunner

from weightflow.cli import app as cli
from weightflow.client import run_state
from weightflow.contracts.base import Event
from weightflow.contracts.monitoring import CanaryPassed
from weightflow.contracts.registry import (
    DeploymentPromoted,
    ModelRegistered,
    PromotionApproved,
    PromotionAwaitingApproval,
    PromotionDecided,
    PromotionRejected,
)
from weightflow.contracts.workflow import RequestRefused
from weightflow.live_history import changes, live_at
from weightflow.render import summary

from .test_workflow_unit import Workflow, build_workflow, of


def _decide(workflow: Workflow, kind: type[PromotionApproved | PromotionRejected], manifest_id: str,
            reason: str = "looked at the evidence", run_id: UUID | None = None) -> list[Event]:
    workflow.runner.publish(kind(run_id=run_id or uuid4(), deployment="scripted", manifest_id=manifest_id,
                                 decided_by="tester@admin", reason=reason))
    return workflow.settle()


def _refusal(events: list[Event]) -> str:
    [refused] = of(events, RequestRefused)
    assert not of(events, DeploymentPromoted) and not of(events, PromotionDecided)
    return str(refused.reason)


def test_approval_promotes_once_and_refuses_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95)
    events = workflow.submit(workflow.requirements(deployment__promotion="manual"))
    [registered] = of(events, ModelRegistered)
    [waiting] = of(events, PromotionAwaitingApproval)
    assert not of(events, DeploymentPromoted) and not of(events, CanaryPassed), "nothing goes live unapproved"
    assert waiting.manifest_id == registered.manifest_id and waiting.live_manifest_id is None
    assert waiting.measurement.interval is not None and waiting.canary_baseline == registered.canary_baseline
    assert "AWAITING APPROVAL" in summary(waiting) and waiting.manifest_id in summary(waiting)
    # `submit` stops following here and `status` says so, instead of "in progress" until a timeout
    assert run_state(waiting.run_id, workflow.runner.log) == ("awaiting approval", None)

    assert "not a registered release of 'scripted'" in _refusal(_decide(workflow, PromotionApproved, "0" * 64))

    # `weightflow approve` continues the waiting run (weightflow.cli.approval.waiting_run)
    approved = _decide(workflow, PromotionApproved, waiting.manifest_id, "eval and canary both hold", waiting.run_id)
    [decided] = of(approved, PromotionDecided)
    assert (decided.decision, decided.decided_by, decided.reason) == ("approved", "tester@admin",
                                                                     "eval and canary both hold")
    [promoted] = of(approved, DeploymentPromoted)
    assert promoted.manifest_id == waiting.manifest_id and promoted.previous_manifest_id is None
    assert promoted.requirements_version == registered.requirements_version
    assert of(approved, CanaryPassed), "the approved release is watched like any promoted one"
    assert run_state(waiting.run_id, workflow.runner.log) == ("succeeded", None)

    assert "decided already" in _refusal(_decide(workflow, PromotionApproved, waiting.manifest_id))
    assert "decided already" in _refusal(_decide(workflow, PromotionRejected, waiting.manifest_id))
    assert len(of(workflow.runner.log, DeploymentPromoted)) == 1

    found = changes(workflow.runner.log, "scripted")
    assert [c.kind for c in found] == ["awaiting approval", "promoted"]
    assert "approved by tester@admin: eval and canary both hold" in found[1].why
    assert live_at(found, found[0].at) is None and live_at(found, found[1].at) == found[1]


def test_rejection_keeps_the_live_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95)
    workflow.submit()  # automatic, as today
    first = workflow.live()
    assert not of(workflow.runner.log, PromotionAwaitingApproval)
    assert "not awaiting approval (it was promoted" in _refusal(_decide(workflow, PromotionApproved, first))

    events = workflow.submit(workflow.requirements(deployment__promotion="manual", quality__threshold=0.81),
                             changed=True)
    [waiting] = of(events, PromotionAwaitingApproval)
    assert waiting.live_manifest_id == first and waiting.manifest_id != first
    assert not of(events, DeploymentPromoted) and workflow.live() == first

    rejected = _decide(workflow, PromotionRejected, waiting.manifest_id, "wait for the new label set")
    [decided] = of(rejected, PromotionDecided)
    assert decided.decision == "rejected" and not of(rejected, DeploymentPromoted)
    assert workflow.live() == first, "the live release keeps serving"
    assert "decided already" in _refusal(_decide(workflow, PromotionApproved, waiting.manifest_id))

    found = changes(workflow.runner.log, "scripted")
    assert [c.kind for c in found] == ["promoted", "awaiting approval", "rejected"]
    assert found[2].why == "rejected by tester@admin: wait for the new label set"
    assert live_at(found, found[-1].at) == found[0]
    monkeypatch.setattr("weightflow.cli.deployments.history", lambda settings: workflow.runner.log)
    result = CliRunner().invoke(cli, ["history", "scripted"])
    assert result.exit_code == 0 and "awaiting approval" in result.output, result.output
    assert "rejected by tester@admin: wait for the new label set" in result.output
