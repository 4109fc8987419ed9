"""What `weightflow doctor` says about a NATS JetStream cluster.

The nodes come from each node's monitoring endpoint (`/varz` for its name, `/jsz` for the meta group: the
leader that places streams and consumers, and how current every other node is). Each stream's and consumer's
leader and replicas come from JetStream's own info (`$JS.API.STREAM.INFO` / `CONSUMER.INFO`), which any
client may ask. A replica that is not current is looked at twice, a couple of seconds apart, before it is a
finding: one that just took a write or just came back from a restart catches up within that.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any

from nats.js.errors import NotFoundError

from weightflow.shared.bus.streams import stream_configs
from weightflow.shared.settings import Settings, split_urls

SECOND_LOOK_S = 2.0
LIST_PAGE = 256  # nats-server's page of CONSUMER.LIST


@dataclass(frozen=True)
class Replicas:
    """One stream's or consumer's raft group as JetStream reports it."""

    leader: str | None
    current: tuple[str, ...]
    behind: tuple[tuple[str, int], ...]  # (node, lag in operations) of replicas not current or offline

    @classmethod
    def of(cls, cluster: Any) -> Replicas:
        """From nats-py's `ClusterInfo` (None outside a cluster: the one server leads)."""
        if cluster is None:
            return cls(None, (), ())
        current, behind = [], []
        for peer in cluster.replicas or []:
            if peer.current and not peer.offline:
                current.append(str(peer.name))
            else:
                behind.append((str(peer.name), int(peer.lag or 0)))
        return cls(cluster.leader or None, tuple(sorted(current)), tuple(sorted(behind)))

    def describe(self) -> str:
        parts = [f"leader {self.leader or 'NONE'}"] + [f"{n} current" for n in self.current]
        parts += [f"{n} behind (lag {lag})" for n, lag in self.behind]
        return ", ".join(parts)


def stream_findings(name: str, replicas: Replicas, configured: int, wanted: int) -> list[str]:
    """What needs an operator about one stream's copies; `configured` is its num_replicas, `wanted` the setting."""
    problems = []
    if configured > 1 and replicas.leader is None:
        problems.append(f"stream {name} has no leader: fewer than {configured // 2 + 1} of its {configured} "
                        "replicas are up; start the nats-server nodes that are down")
    for node, lag in replicas.behind:
        problems.append(f"stream {name}: replica on {node} is not current (lag {lag}); if that node is down, start "
                        "it again (the stream survives no further loss meanwhile)")
    if configured < wanted:
        problems.append(f"stream {name} keeps {configured} replica(s), WEIGHTFLOW_STREAM_REPLICAS is {wanted}: any "
                        "weightflow command with that setting raises it (or `nats stream edit --replicas`)")
    return problems


def consumer_summary(stream: str, consumers: list[tuple[str, Replicas]]) -> tuple[str, list[str]]:
    """One line for a stream's consumers (how many, where their leaders are) and findings grouped by cause: the
    consumers with no leader, and per node the consumers whose replica there is not current (one dead node makes
    every consumer it held a replica of lag)."""
    leaders = Counter(r.leader or "NONE" for _, r in consumers)
    problems = []
    leaderless = sorted(name for name, r in consumers if r.leader is None)
    if leaderless:
        problems.append(f"{len(leaderless)} consumer(s) of {stream} have no leader ({', '.join(leaderless[:3])}"
                        f"{', ...' if len(leaderless) > 3 else ''}): their services get no messages until a quorum of "
                        "their replicas is up; start the nats-server nodes that are down")
    lags: dict[str, list[int]] = {}
    for _, replicas in consumers:
        for node, lag in replicas.behind:
            lags.setdefault(node, []).append(lag)
    for node, behind in sorted(lags.items()):
        problems.append(f"{len(behind)} consumer(s) of {stream} have a replica on {node} that is not current (lag up "
                        f"to {max(behind)}): is {node} running?")
    where = ", ".join(f"{node} {count}" for node, count in sorted(leaders.items()))
    state = "every replica current" if not problems else "some replicas NOT current"
    return f"consumers of {stream}: {len(consumers)}, leaders on {where}; {state}", problems


@dataclass(frozen=True)
class Node:
    monitor_url: str
    name: str | None  # None: it did not answer
    meta: dict[str, Any] | None  # its /jsz meta_cluster


def _get_json(url: str, timeout: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.loads(resp.read(4 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_node(monitor_url: str, timeout: float = 1.0) -> Node:
    base = monitor_url.rstrip("/")
    varz = _get_json(f"{base}/varz", timeout)
    if varz is None:
        return Node(monitor_url, None, None)
    jsz = _get_json(f"{base}/jsz", timeout) or {}
    meta = jsz.get("meta_cluster")
    return Node(monitor_url, str(varz.get("server_name") or varz.get("server_id")),
                meta if isinstance(meta, dict) else None)


def nodes_report(nodes: list[Node]) -> tuple[list[str], list[str]]:
    """Notes and findings about the nodes behind the monitoring URLs: who answers, who leads the meta group (which
    places streams and consumers), and whether every node is current with it."""
    notes: list[str] = []
    problems = [f"nats-server at {n.monitor_url} did not answer: start it again (a three-node cluster keeps "
                "working on two, but survives no further loss)" for n in nodes if n.name is None]
    up = [n for n in nodes if n.name is not None]
    metas = [n for n in up if n.meta]
    if not metas:  # a single server (or none answering): nothing to say about a cluster
        return notes, problems
    leader_name = next((m.meta.get("leader") for m in metas if m.meta and m.meta.get("leader")), None)
    view = next((m for m in metas if m.name == leader_name), metas[0])  # the leader knows how current peers are
    assert view.meta is not None
    peers = {str(p.get("name")): p for p in view.meta.get("replicas") or [] if isinstance(p, dict)}
    names = sorted({*(str(n.name) for n in up), *peers, *([leader_name] if leader_name else [])})
    size = int(view.meta.get("cluster_size") or len(names))
    answering = sum(1 for n in names if n in {str(u.name) for u in up})
    notes.append(f"NATS cluster {view.meta.get('name')}: {len(names)} nodes ({', '.join(names)}), meta leader "
                 f"{leader_name or 'NONE'}, {answering} of {size} answering")
    if not leader_name:
        problems.append(f"NATS cluster {view.meta.get('name')} has no meta leader: fewer than "
                        f"{size // 2 + 1} of {size} nodes are up; no stream or consumer can be created or moved")
    for name, peer in sorted(peers.items()):
        if not peer.get("current") or peer.get("offline"):
            seen = int(peer.get("active") or 0) / 1e9
            problems.append(f"NATS node {name} is not current with the meta leader (last seen {seen:.0f} s ago, "
                            f"lag {peer.get('lag') or 0}): is it running?")
    return notes, problems


def read_nodes(monitor_urls: str, timeout: float = 1.0) -> list[Node]:
    return [read_node(url, timeout) for url in split_urls(monitor_urls)]


async def durable_consumers(js: Any, stream: str) -> list[Any]:
    """Every durable consumer of the stream (the services' and their audit twins; not a reader's ephemeral one)."""
    infos: list[Any] = []
    while True:
        page = await js.consumers_info(stream, offset=len(infos))
        infos += page
        if len(page) < LIST_PAGE:
            return [i for i in infos if i.config.durable_name]


async def replication_report(js: Any, settings: Settings) -> tuple[list[str], list[str]]:
    """Notes and findings on the nodes and on each replicated stream and its consumers (nothing without replicas
    and without a cluster: a single server has nothing to say here)."""
    monitor = settings.resolved_nats_monitor_url()
    notes, problems = nodes_report(await asyncio.to_thread(read_nodes, monitor)) if monitor else ([], [])
    for name in (str(config.name) for config in stream_configs(settings)):
        try:
            info = await js.stream_info(name)
        except (NotFoundError, TimeoutError):  # doctor reports a missing or leaderless stream already
            continue
        configured = info.config.num_replicas or 1
        if configured == 1 and settings.stream_replicas == 1:
            continue
        replicas = Replicas.of(info.cluster)
        notes.append(f"stream {name}: {configured} replicas: {replicas.describe()}")
        problems += stream_findings(name, replicas, configured, settings.stream_replicas)
        consumers = [(str(c.name), Replicas.of(c.cluster)) for c in await durable_consumers(js, name)]
        if consumers:
            note, found = consumer_summary(name, consumers)
            notes.append(note)
            problems += found
    return notes, problems


async def cluster_health(js: Any, settings: Settings) -> tuple[list[str], list[str]]:
    """`replication_report`, read again after SECOND_LOOK_S when it found something: a replica that just took a
    write, or a node just restarted and catching up, is current again by then; a dead one is not."""
    notes, problems = await replication_report(js, settings)
    if problems:
        await asyncio.sleep(SECOND_LOOK_S)
        notes, problems = await replication_report(js, settings)
    return notes, problems
