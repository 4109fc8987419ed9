"""Manual promotion through the real stack (issue 23, part 5): a hosted-model deployment (a real MiniLM behind
`weightflow serve`) under `deployment.promotion: manual` waits for approval with its evidence; the real
`weightflow approve` command promotes it, a second approval is refused, and `weightflow history` says who
approved and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from weightflow.cli import app as cli
from weightflow.contracts.registry import DeploymentPromoted, PromotionAwaitingApproval, PromotionDecided
from weightflow.render import summary
from weightflow.serving.testing import ServerThread, register_checkpoint
from weightflow.submission import prepare

from ..conftest import E2E_API_KEY, E2E_API_KEY_ENV, LiveStack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_approve_promotes_a_waiting_release(live_stack: LiveStack, example_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = live_stack.store
    upstream_doc = example_dir / "requirements.yaml"
    upstream_doc.write_text(upstream_doc.read_text().replace("name: ticket-router", "name: tr-approve-up"))
    upstream = register_checkpoint(store, upstream_doc, candidate=1)  # minilm-l6, unquantized
    monkeypatch.setenv("WEIGHTFLOW_HOME", str(live_stack.settings.home))

    with ServerThread(live_stack.settings, "tr-approve-up", upstream, api_key=E2E_API_KEY) as server:
        data = yaml.safe_load(upstream_doc.read_text())
        data["deployment"] = {"name": "tr-approve", "mode": "api", "promotion": "manual"}
        data["candidates"] = [{"name": "served-l6", "api": {
            "base_url": server.url + "/v1", "model": "tr-approve-up", "api_key_env": E2E_API_KEY_ENV,
            "route": "embeddings", "price_per_1k_input_tokens": 0.001, "price_per_1k_output_tokens": 0.0,
            "max_concurrency": 4}}]
        data["quality"]["threshold"] = 0.75  # fp32 MiniLM-L6 scores 0.78 here
        data["latency"]["p95_ms"] = 10_000  # judged over HTTP on busy shared cores: the decision is under test here
        doc = example_dir / "manual.yaml"
        doc.write_text(yaml.safe_dump(data))
        tracker = live_stack.run(prepare(doc, store).event, timeout=400,
                                 done=lambda e: isinstance(e, PromotionAwaitingApproval))
        assert tracker.outcome == "succeeded", [summary(e) for e in tracker.events]
        (waiting,) = [e for e in tracker.events if isinstance(e, PromotionAwaitingApproval)]
        assert waiting.live_manifest_id is None and waiting.measurement.interval is not None
        assert not [e for e in tracker.events if isinstance(e, DeploymentPromoted)]

        result = CliRunner().invoke(cli, ["approve", "tr-approve", waiting.manifest_id, "--reason", "reviewed"])
        assert result.exit_code == 0, result.output
        assert "approved" in result.output and "promoted tr-approve" in result.output, result.output
        again = CliRunner().invoke(cli, ["approve", "tr-approve", waiting.manifest_id, "--reason", "again"])
        assert again.exit_code == 1 and "decided already" in again.output, again.output

    events = live_stack.history()
    (decided,) = [e for e in events if isinstance(e, PromotionDecided) and e.deployment == "tr-approve"]
    assert decided.decided_by.endswith("@anonymous") and decided.reason == "reviewed"
    shown = CliRunner().invoke(cli, ["history", "tr-approve"])
    assert shown.exit_code == 0 and "awaiting approval" in shown.output, shown.output
    assert f"approved by {decided.decided_by}: reviewed" in shown.output
