"""Crashes in the middle of real work, on real processes: nothing lost, nothing done twice.

Each service process is SIGKILLed while handling its first event, once in the middle of its database
transaction and once after the commit but before the ack; the nats-server is SIGKILLed and restarted
mid-run. The supervisor restarts what died, JetStream redelivers, the inbox absorbs the repeats, and
the outbox relay publishes what the crash held back. Each test runs with the state in SQLite (the embedded
default) and in PostgreSQL (`-m postgres` runs that half alone).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import CandidateBenchmarked
from weightflow.contracts.fitting import FitCompleted
from weightflow.contracts.monitoring import CanaryPassed
from weightflow.contracts.topology import SERVICES
from weightflow.shared.db import make_engine
from weightflow.submission import prepare

from ..conftest import EXAMPLE_DIR, LiveStack, start_stack
from ..exactly_once import assert_exactly_once
from .test_e2e import assert_a_monitored_deployment

# Twelve kills, each waiting out ack_wait and a process restart (a torch import): minutes, and on a loaded
# 2-core machine close to pytest's default 600 s; these runs get 1200 s before they count as hung.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

CRASH_POINTS = ("mid_transaction", "after_commit")

# The example's run, event by event (see test_e2e): exactly these, each exactly once.
EXPECTED = Counter({
    "requirements.submitted": 1, "requirements.accepted": 1, "benchmark.candidate_benchmarked": 2,
    "benchmark.selection_decided": 1, "fitting.memory_budget_computed": 2, "benchmark.requested": 1,
    "benchmark.variant_benchmarked": 1, "fitting.needs_tuning": 1, "tuning.adapter_trained": 1, "tuning.gated": 1,
    "registry.model_registered": 1, "registry.deployment_promoted": 1, "monitoring.canary_requested": 1,
    "monitoring.canary_passed": 1,
})
# Rows each stage writes for that run.
EXPECTED_ROWS = {"requirements_versions": 1, "benchmark_results": 3, "fitting_attempts": 1, "tuning_runs": 1,
                 "registry_manifests": 1}


def wait_for_history(live: LiveStack, predicate: Callable[[list[Event]], bool], timeout: float) -> list[Event]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            events = live.history()
            if predicate(events):
                return events
        except Exception:  # the server may be down or recovering: keep asking
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s\n{live.logs()}")
        time.sleep(1.0)


def test_every_service_killed_mid_handling_loses_and_repeats_nothing(tmp_path: Path,
                                                                   stack_database: dict[str, str]) -> None:
    """Every service SIGKILLed at each crash point (inside its transaction, and after the commit before the ack),
    the twelve kills shared between the two databases: each service is killed once per database, the points
    alternating down the services, and PostgreSQL takes the six SQLite leaves out (each kill costs a redelivery
    and a torch process start, and the suite has a time budget). A crash point fires once per service, marked by a
    file: the ones a database leaves out are marked before. The PostgreSQL run is also the main run on PostgreSQL:
    a monitored deployment, every row in PostgreSQL and none in a SQLite file."""
    home = tmp_path / "home"
    on_postgres = "WEIGHTFLOW_DATABASE_URL" in stack_database
    left_out = {f"{service}.{point}" for i, service in enumerate(SERVICES) for j, point in enumerate(CRASH_POINTS)
                if (i + j + on_postgres) % 2}
    (home / "crash-points").mkdir(parents=True)
    for marker in left_out:
        (home / "crash-points" / marker).touch()
    live = start_stack(home, WEIGHTFLOW_CRASH_POINTS=",".join(CRASH_POINTS), WEIGHTFLOW_ACK_WAIT_S=6,
                       WEIGHTFLOW_CANARY_INTERVAL_S=3600, **stack_database)
    try:
        with live.stack.supervising(interval=0.3):  # restart dead services, as `weightflow up` does
            event = prepare(EXAMPLE_DIR / "requirements.yaml", live.store).event
            tracker = live.run(event, timeout=900)
            assert tracker.outcome == "succeeded", live.why(tracker)
            time.sleep(2.0)  # a late duplicate would land now
            history = live.history()
        fired = sorted(p.name for p in (live.stack.home / "crash-points").iterdir())
        assert fired == sorted(f"{s}.{p}" for s in SERVICES for p in CRASH_POINTS), fired
        assert sum(live.stack.restarts.values()) == len(SERVICES) * len(CRASH_POINTS) - len(left_out)
        assert_exactly_once(live, history, event.run_id, expected=EXPECTED, rows=EXPECTED_ROWS)
        assert_a_monitored_deployment(tracker.events, live)
        if on_postgres:
            assert not (home / "weightflow.db").exists(), "no service fell back to SQLite"
            engine = make_engine(stack_database["WEIGHTFLOW_DATABASE_URL"])
            with engine.connect() as conn:
                for table in ("requirements_versions", "benchmark_results", "registry_manifests", "wf_inbox"):
                    assert conn.execute(text(f"SELECT count(*) FROM {table} WHERE run_id = :r"),
                                        {"r": str(event.run_id)}).scalar_one() > 0, table
                assert conn.execute(text("SELECT count(*) FROM monitoring_canaries")).scalar_one() == 1
            engine.dispose()
    finally:
        live.stack.stop()


def test_nats_server_restart_and_sigterm_mid_training(tmp_path: Path) -> None:
    """The broker dies mid-run and comes back: services reconnect by themselves. Then the tuning service
    gets SIGTERM while it trains: it exits within its grace period, handing the work back, and its
    restart trains the adapter once. On the embedded default (SQLite) only: what the broker and a signal do is
    the same on either database, and the redelivery's exactly-once on PostgreSQL is the kill test's (a whole
    example run each, in a suite with a time budget)."""
    grace = 2.0
    live = start_stack(tmp_path / "home", WEIGHTFLOW_ACK_WAIT_S=6, WEIGHTFLOW_CANARY_INTERVAL_S=3600,
                       WEIGHTFLOW_SHUTDOWN_GRACE_S=grace)
    try:
        event = prepare(EXAMPLE_DIR / "requirements.yaml", live.store).event
        live.publish(event)
        wait_for_history(live, lambda es: any(isinstance(e, CandidateBenchmarked) and e.run_id == event.run_id
                                              for e in es), timeout=300)
        nats = live.stack.nats
        assert nats is not None
        nats.stop(kill=True)
        time.sleep(3.0)  # services see the outage: publishes, acks and fetches fail meanwhile
        nats.start()
        wait_for_history(live, lambda es: any(isinstance(e, FitCompleted) and e.run_id == event.run_id
                                              for e in es), timeout=600)
        assert all(p.poll() is None for p in live.stack.procs.values()), "services reconnected, none died"
        tuning = live.stack.procs["tuning-0"]
        tuning.send_signal(signal.SIGTERM)  # LoRA training takes tens of seconds: it is mid-work now
        started = time.monotonic()
        assert tuning.wait(timeout=grace + 20) == 0
        assert time.monotonic() - started < grace + 20
        log = (live.stack.home / "logs" / "tuning-0.log").read_text()
        assert "NAKed in-flight wf.fitting.needs_tuning" in log, "it was interrupted mid-training, not idle"
        with live.stack.supervising(interval=0.3):  # restart dead services, as `weightflow up` does
            history = wait_for_history(live, lambda es: any(isinstance(e, CanaryPassed) and e.run_id == event.run_id
                                                            for e in es), timeout=600)
        assert_exactly_once(live, history, event.run_id, expected=EXPECTED, rows=EXPECTED_ROWS)
    finally:
        live.stack.stop()
