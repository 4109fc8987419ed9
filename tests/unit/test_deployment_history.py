"""`weightflow history DEPLOYMENT [--at TIME]` (issue 23, part 5): what was live when, and why it changed, from the
events of a real workflow (the unit lane: six services' handlers, tiny real checkpoints, scripted scores)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from weightflow.cli import app as cli
from weightflow.contracts.registry import DeploymentPromoted, RolledBack
from weightflow.live_history import changes, live_at

from .test_workflow_unit import Workflow, build_workflow, of


def test_history_says_what_was_live_when_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workflow: Workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95)
    workflow.submit()
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.3, b_canary=0.95)  # a drifts: b goes live
    workflow.canary()
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.3)  # b drifts: back to a
    workflow.canary()
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.3, b_canary=0.3)  # v2's canary set disagrees: kept out
    workflow.submit(workflow.requirements(quality__threshold=0.81), changed=True)
    log = workflow.runner.log
    first, second = (e.manifest_id for e in of(log, DeploymentPromoted)[:2])
    found = changes(log, "scripted")
    assert [c.kind for c in found] == ["promoted", "promoted", "rolled back", "not promoted", "not promoted"]
    assert [c.manifest_id for c in found[:3]] == [first, second, first]
    assert "automatically" in found[2].why and "canary failed" in found[2].why
    assert "baseline failed the canary" in found[3].why
    assert live_at(found, found[0].at - timedelta(seconds=1)) is None
    assert live_at(found, found[1].at) == found[1] and live_at(found, found[2].at) == found[2]
    assert live_at(found, found[-1].at + timedelta(days=1)) == found[2], "kept-out releases never served"
    assert of(log, RolledBack) and changes(log, "nope") == []

    monkeypatch.setattr("weightflow.cli.deployments.history", lambda settings: log)
    result = CliRunner().invoke(cli, ["history", "scripted"])
    assert result.exit_code == 0 and result.output.count("\n") == 5 and "rolled back" in result.output, result.output
    result = CliRunner().invoke(cli, ["history", "scripted", "--at", found[1].at.isoformat()])
    assert result.exit_code == 0 and f"live at {found[1].at.isoformat()}" in result.output, result.output
    assert second[:12] in result.output
    result = CliRunner().invoke(cli, ["history", "scripted", "--at", "yesterday"])
    assert result.exit_code == 2 and "ISO 8601" in result.output
    result = CliRunner().invoke(cli, ["history", "scripted", "--at", "2000-01-01T00:00:00"])
    assert result.exit_code == 1 and "nothing of 'scripted' was live" in result.output
