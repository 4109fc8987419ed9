"""`weightflow serve` as an operator runs it: a process beside the stack, following the registry.

Two releases of a deployment, the server on the live one under constant load, then a rollback and a
roll-forward: the server swaps each time and not one request fails."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from weightflow.contracts.monitoring import CanaryPassed
from weightflow.contracts.registry import DeploymentPromoted, ModelRegistered, RollbackRequested, RolledBack
from weightflow.serving.app import MANIFEST_HEADER
from weightflow.serving.testing import free_port
from weightflow.submission import prepare

from ..conftest import LiveStack
from .test_e2e_api import canary

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def cli_env(live_stack: LiveStack) -> dict[str, str]:
    return dict(os.environ, WEIGHTFLOW_HOME=str(live_stack.settings.home),
                WEIGHTFLOW_NATS_URL=str(live_stack.settings.nats_url))


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 180) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            r = httpx.get(url + "/readyz", timeout=2)
            if r.status_code == 200:
                return dict(r.json())
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve was not ready in time")


def test_serve_follows_promotions_and_swaps_without_failing_a_request(live_stack: LiveStack,
                                                                    example_dir: Path) -> None:
    """Two releases of its own deployment, served under load while `weightflow rollback` goes back to the first
    and forward again: no request fails, and each rollback names where it came from and went."""
    doc = example_dir / "requirements.yaml"
    doc.write_text(doc.read_text().replace("name: ticket-router", "name: tr-serve"))
    releases = []
    for cost in ("0.05", "0.04"):
        doc.write_text(doc.read_text().replace("per_1k_tasks_usd: 0.05", f"per_1k_tasks_usd: {cost}"))
        tracker = live_stack.run(prepare(doc, live_stack.store, changed=bool(releases)).event)
        assert tracker.outcome == "succeeded", live_stack.why(tracker)
        releases.append([e for e in tracker.events if isinstance(e, DeploymentPromoted)][-1].manifest_id)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "weightflow.cli", "serve", "tr-serve", "--port", str(port)],
                            env=cli_env(live_stack), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_ready(url, proc)["manifest_id"] == releases[1]
        answers: list[tuple[int, str]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    r = client.post(url + "/v1/classify", json={"model": "tr-serve", "input": "refund my order"})
                    answers.append((r.status_code, r.headers.get(MANIFEST_HEADER, "")))

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()

        def swap_to(expected: str, event: RollbackRequested) -> RolledBack:
            tracker = live_stack.run(event, done=lambda e: isinstance(e, RolledBack), timeout=120)
            assert tracker.outcome == "succeeded", live_stack.why(tracker)
            deadline = time.monotonic() + 60
            while not any(m == expected for _, m in answers[-8:]):
                assert time.monotonic() < deadline, "the server did not swap to the promoted manifest"
                time.sleep(0.1)
            time.sleep(0.5)
            return next(e for e in tracker.events if isinstance(e, RolledBack))

        time.sleep(1.0)
        # a plain rollback goes to the release before the live one, whose requirements were older
        rolled = swap_to(releases[0], RollbackRequested(run_id=uuid4(), deployment="tr-serve"))
        assert (rolled.from_manifest_id, rolled.to_manifest_id) == (releases[1], releases[0])
        assert rolled.to_older_requirements and not rolled.automatic
        swap_to(releases[1], RollbackRequested(run_id=uuid4(), deployment="tr-serve", to_manifest_id=releases[1]))
        stop.set()
        for w in workers:
            w.join(timeout=60)

        assert answers and all(status == 200 for status, _ in answers), {s for s, _ in answers}
        served = [m for _, m in answers]
        assert served[0] == served[-1] == releases[1] and releases[0] in served
        # the runbook's own serving lines work as written
        registered = [e for e in live_stack.history() if isinstance(e, ModelRegistered)
                      and e.manifest_id == releases[1]][-1]
        runbook = live_stack.store.read_bytes(registered.runbook_digest).decode()
        assert "weightflow serve tr-serve --port 8000" in runbook
        route, body = re.search(r"curl -s localhost:8000(\S+) .* -d '(.+)'", runbook).groups()  # type: ignore[union-attr]
        assert httpx.post(url + route, content=body, headers={"content-type": "application/json"}).status_code == 200
        health = httpx.get(url + "/healthz").json()
        assert health["swaps"] == 2 and health["following"] and health["last_error"] is None
        # the server announced itself: the canary probes it over HTTP, as clients call it
        probe = canary(live_stack, "tr-serve")
        assert isinstance(probe, CanaryPassed) and probe.measurement.via == "http", probe
        assert probe.measurement.extra["http_status/200"] == probe.measurement.n
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    # a graceful stop: uvicorn finishes in-flight requests, then dies of the SIGTERM it was sent
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in out, out[-3000:]
    # withdrawn on a graceful stop: the canary loads its own copy again (no false 'unreachable')
    probe = canary(live_stack, "tr-serve")
    assert isinstance(probe, CanaryPassed) and probe.measurement.via == "process", probe


def test_serving_a_deployment_that_was_never_promoted_says_so(live_stack: LiveStack) -> None:
    proc = subprocess.run([sys.executable, "-m", "weightflow.cli", "serve", "no-such-deployment",
                           "--port", str(free_port())], env=cli_env(live_stack), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no promoted manifest" in proc.stderr + proc.stdout
