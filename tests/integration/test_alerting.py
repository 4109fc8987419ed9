"""Alerting that works end to end: the shipped Prometheus rules pass `promtool` (syntax and unit cases) and
name only metrics weightflow exports; the shipped NATS subscriber turns alert events into alerts while
running as the generated `alerting` user, who may do nothing else."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from uuid import uuid4

import pytest
from prometheus_client import REGISTRY

import weightflow.shared.metrics  # noqa: F401 - registers weightflow's metrics
from weightflow.client import Client
from weightflow.contracts.monitoring import DriftDetected
from weightflow.contracts.workflow import Attempt, WorkflowHalted

from ..conftest import ROOT
from .test_nats_permissions import SecuredNats, secured  # noqa: F401 - the fixture

RULES = ROOT / "weightflow" / "operations" / "alert-rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install "
                                                             "prometheus; .ci/run installs it)")


@needs_promtool
def test_rules_pass_promtool_check_and_their_unit_cases() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    cases = ROOT / "tests" / "alerting" / "alert-rules.test.yml"
    unit = subprocess.run([PROMTOOL, "test", "rules", cases.name], capture_output=True, text=True, cwd=cases.parent)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_rules_name_only_metrics_weightflow_exports() -> None:
    families = list(REGISTRY.collect())  # a labelled metric no process has set yet has a family, no samples
    exported = {f.name for f in families} | {f.name + "_total" for f in families if f.type == "counter"}
    named = set(re.findall(r"\bweightflow_[a-z0-9_]+", RULES.read_text()))
    assert named, "the rules name no weightflow metric"
    assert named <= exported, f"rules name metrics nobody exports: {sorted(named - exported)}"


def test_the_subscriber_example_alerts_as_the_alerting_user(secured: SecuredNats) -> None:  # noqa: F811
    script = ROOT / "examples" / "alerting" / "subscriber.py"
    proc = subprocess.Popen([sys.executable, str(script), "--url", secured.url("alerting")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert "listening" in first, first
        drift = DriftDetected(run_id=uuid4(), deployment="ticket-router", manifest_id="m1", kind="latency",
                              baseline=10.0, observed=25.0, limit=20.0)
        halted = WorkflowHalted(run_id=uuid4(), deployment="ticket-router", requirements_version=2,
                                attempts=[Attempt(run_id=uuid4(), candidate="minilm-l3", reason="canary failed")],
                                reason="3 reroutes spent", advice=["relax quality.threshold to 0.80"])

        async def publish() -> None:
            async with Client(secured.settings("admin")) as admin:
                await admin.publish(drift)
                await admin.publish(halted)

        asyncio.run(publish())
        alerts = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [(a["alert"], a["severity"], a["deployment"]) for a in alerts] == [
            ("monitoring.drift_detected", "warning", "ticket-router"), ("workflow.halted", "page", "ticket-router")]
        assert alerts[0]["summary"] == "latency drift: 25.0 past 20.0"
        assert "relax quality.threshold to 0.80" in alerts[1]["summary"]
        assert alerts[1]["event_id"] == str(halted.event_id)
        time.sleep(0.5)
        assert "Violation" not in secured.violations(), secured.violations()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
