"""NATS permissions for the scaled deployment: one user per service, each confined to its own subjects.

Pure functions: from the workflow's topology (contracts/topology.py: the consumed events give the durable
consumers, the emitted ones the publish subjects) they build a nats-server configuration in which

* each service user may publish only the stream subjects it emits (plus `DeadLettered`, which every
  service may send) and the JetStream API requests for *its own* durable consumers: look one up, create
  it with exactly its own filter subject, fetch from it and ack what it fetched; and read the run
  registry (direct gets on `WF_RUNS`), which only the requirements service may write; and put and get
  artifacts in the Object Store bucket (`WF_ARTIFACTS`, see `artifact_subjects`). No `$JS.>` or
  `$JS.API.>` grant, no stream management; it may subscribe only to its own reply inbox
  (`Service.inbox_prefix()`), so it cannot read replies, or fetched messages, meant for another service;
* `admin` (the operator's CLI: creates the stream, reads history, replays dead letters) may do anything, and
  is the only user that may publish a promotion decision (`ADMIN_ONLY`: approve or reject a release held by
  `deployment.promotion: manual`); a service that declared one would be refused a configuration;
* `alerting` may only subscribe (core NATS) to the alert subjects (drift, canary outcomes, halts,
  rollbacks), and publish nothing;
* `serve` (`weightflow serve --manifest ID` with the object-store backend) may only read artifacts: open the
  bucket and get an object's meta and chunks, with replies on its own inbox (`SERVE_INBOX_PREFIX`).

Because services may not create the stream, run them with `WEIGHTFLOW_DECLARE_STREAM=false` and let the
admin create it first (any `weightflow` CLI command does, through `ensure_stream`).

Each service user lives in an account of its own, which imports from the stream's account (`WF`,
home of the streams, `admin` and `alerting`) exactly the subjects it may publish. A reply subject is
then resolved in the publisher's own account: a service that sets the reply of its publish to another
stage's subject gets JetStream's acknowledgement delivered back into its own account (where nobody
listens), not written onto that subject. Within one account, NATS checks no reply subjects at all.

A cluster (`cluster_node_config`) is the same document per node, plus the node's name, its route listener and
its peers' routes (authenticated with a route user of their own: an open route port would let anyone join the
cluster as a peer and read every stream) and the file-store sync policy the embedded cluster uses.

The result is a JSON document, which nats-server reads as its configuration format.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from weightflow.contracts import topology
from weightflow.contracts.base import Event
from weightflow.contracts.registry import PromotionApproved, PromotionRejected
from weightflow.shared.bus import Service
from weightflow.shared.bus.streams import RUNS_PREFIX, runs_stream_name
from weightflow.shared.natsd import CLUSTER_SYNC_INTERVAL
from weightflow.shared.settings import Settings

ADMIN_USER = "admin"
ALERTING_USER = "alerting"
ALERTING_EVENTS: tuple[type[Event], ...] = topology.ALERTS
SERVE_USER = "serve"
# Decisions only a person makes, through the CLI's admin user: no service user is ever granted their subjects.
ADMIN_ONLY: tuple[type[Event], ...] = (PromotionApproved, PromotionRejected)
# Where `weightflow serve`'s artifact reads get their answers, as `Service.inbox_prefix()` is for a service: the
# serve user may subscribe there only.
SERVE_INBOX_PREFIX = f"_INBOX.{SERVE_USER}"


@dataclass(frozen=True)
class ServiceGrant:
    """What one service does on the bus, which is all its NATS user may do."""

    name: str
    inbox_prefix: str
    consumes: tuple[tuple[str, str, str], ...]  # (stream, durable consumer name, filter subject)
    publishes: tuple[str, ...]  # stream subjects

    @classmethod
    def of(cls, service: Service, stream: str = "WF") -> ServiceGrant:
        forbidden = [e.__name__ for e in service.publishes if e in ADMIN_ONLY]
        if forbidden:
            raise ValueError(f"service {service.name!r} declares that it emits {', '.join(forbidden)}, which only the "
                             "admin (CLI) user may publish; take it out of its emits in contracts/topology.py")
        subjects = {e.subject() for e in service.publishes}
        if any(e.registers_runs() for e in service.publishes):  # the run registry's subjects (shared.bus.streams)
            subjects.add(f"{RUNS_PREFIX}.*")
        return cls(
            name=service.name,
            inbox_prefix=service.inbox_prefix(),
            consumes=tuple(sorted(service.consumers(Settings(stream=stream)))),
            publishes=tuple(sorted(subjects)),
        )


def load_services(names: Iterable[str]) -> list[Service]:
    """Each named service as the topology declares it (no service code, and no torch, is loaded)."""
    return [Service(name) for name in names]


def consumer_api_subjects(stream: str, durable: str, filter_subject: str) -> list[str]:
    """The JetStream requests a pull subscriber (nats-py `pull_subscribe`, as faststream uses it) makes
    for one durable consumer, and nothing for any other consumer.

    `CONSUMER.CREATE.<stream>.<durable>.<filter>` names the filter subject, and the server refuses a
    request whose config filters anything else: the user can create its consumer only for the events
    it handles, not one over `wf.>` that would read every stage's events.
    """
    return [
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{filter_subject}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",  # ack, nak, in-progress and term of the messages it fetched
    ]


def artifact_read_subjects(bucket: str) -> list[str]:
    """What `shared.nats_objects` needs to get artifacts from the Object Store `bucket`: open the bucket (stream
    info of `OBJ_<bucket>`), read an object's meta from the stream leader (a message get, which takes any subject
    of that stream only) and its chunks one direct get at a time from any replica."""
    stream = f"OBJ_{bucket}"
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
    ]


def artifact_subjects(bucket: str) -> list[str]:
    """What `shared.nats_objects` needs to put and get artifacts in the Object Store `bucket`, and nothing more.

    The reads (`artifact_read_subjects`), and publishing chunks and metas on the bucket's own subjects. Not
    granted: creating, purging or deleting the stream (the admin creates the bucket; a service that replaces a
    broken copy leaves its old chunks, with a warning), and consumers (nats-py's own `ObjectStore.get` reads
    through an ordered push consumer; ours does not).
    """
    return [
        *artifact_read_subjects(bucket),
        f"$O.{bucket}.C.*",  # chunks
        f"$O.{bucket}.M.*",  # metas
    ]


def service_permissions(grant: ServiceGrant, stream: str, artifact_bucket: str = "WF_ARTIFACTS") -> dict[str, Any]:
    publish = list(grant.publishes)
    for consumer_stream, durable, filter_subject in grant.consumes:
        publish += consumer_api_subjects(consumer_stream, durable, filter_subject)
    runs = runs_stream_name(Settings(stream=stream))
    publish.append(f"$JS.API.DIRECT.GET.{runs}.{RUNS_PREFIX}.*")  # read the run registry, one run at a time
    publish.append(f"$JS.API.STREAM.MSG.GET.{runs}")  # and from its leader, when a replica knew nothing (runs.py)
    # Every service opens the artifact store (shared.bus.runtime) and writes to it: its outputs, and the payloads
    # of the dead letters it sends.
    publish += artifact_subjects(artifact_bucket)
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [f"{grant.inbox_prefix}.>"]},
    }


def serve_permissions(artifact_bucket: str = "WF_ARTIFACTS") -> dict[str, Any]:
    """`weightflow serve` loads a manifest's files from the bucket and writes nothing to NATS."""
    return {
        "publish": {"allow": artifact_read_subjects(artifact_bucket)},
        "subscribe": {"allow": [f"{SERVE_INBOX_PREFIX}.>"]},
    }


def alerting_permissions(events: Sequence[type[Event]] = ALERTING_EVENTS) -> dict[str, Any]:
    return {
        "publish": {"deny": [">"]},
        "subscribe": {"allow": sorted(e.subject() for e in events)},
    }


def admin_permissions() -> dict[str, Any]:
    return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


def user_names(services: Iterable[Service]) -> list[str]:
    names = [s.name for s in services]
    reserved = {ADMIN_USER, ALERTING_USER, SERVE_USER}.intersection(names)
    if reserved:
        raise ValueError(f"service names {sorted(reserved)} collide with the built-in NATS users")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate service names in {names}")
    return [*names, ADMIN_USER, ALERTING_USER, SERVE_USER]


def generate_passwords(users: Iterable[str], existing: Mapping[str, str] | None = None) -> dict[str, str]:
    """A random URL-safe password per user, keeping any `existing` one (so regenerating does not rotate)."""
    existing = existing or {}
    return {u: existing.get(u) or secrets.token_urlsafe(24) for u in users}


STREAM_ACCOUNT = "WF"


def account_name(service: str) -> str:
    return service.upper()


def _imports(subjects: Iterable[str]) -> list[dict[str, Any]]:
    return [{"service": {"account": STREAM_ACCOUNT, "subject": subject}} for subject in subjects]


def build_config(
    services: Sequence[Service],
    passwords: Mapping[str, str],
    *,
    stream: str = "WF",
    artifact_bucket: str = "WF_ARTIFACTS",
    host: str = "0.0.0.0",
    port: int = 4222,
    store_dir: str | Path | None = "/js",
    http_port: int | None = None,
) -> dict[str, Any]:
    """The nats-server configuration as a dict (see `render_config`): listen address, JetStream, accounts.

    `store_dir=None` enables JetStream without naming a store (the server's `-sd` flag then names it).
    """
    user_names(services)  # refuses reserved or duplicate service names
    accounts: dict[str, Any] = {}
    exports: dict[str, list[str]] = {}
    users = [(s.name, service_permissions(ServiceGrant.of(s, stream), stream, artifact_bucket)) for s in services]
    for user, permissions in [*users, (SERVE_USER, serve_permissions(artifact_bucket))]:
        # `$JS.API.INFO` shadows the implicit JetStream import of an account without JetStream, which
        # would otherwise answer every consumer request with "JetStream not enabled".
        subjects = [*permissions["publish"]["allow"], "$JS.API.INFO"]
        for subject in subjects:
            exports.setdefault(subject, []).append(account_name(user))
        accounts[account_name(user)] = {
            "users": [{"user": user, "password": passwords[user], "permissions": permissions}],
            "imports": _imports(subjects),
        }
    accounts[STREAM_ACCOUNT] = {
        "jetstream": "enabled",
        "users": [
            {"user": ADMIN_USER, "password": passwords[ADMIN_USER], "permissions": admin_permissions()},
            {"user": ALERTING_USER, "password": passwords[ALERTING_USER], "permissions": alerting_permissions()},
        ],
        "exports": [
            {
                "service": subject,
                "accounts": sorted(set(names)),
                **({"response_type": "stream"} if ".MSG.NEXT." in subject else {}),
            }
            for subject, names in sorted(exports.items())
        ],
    }
    config: dict[str, Any] = {"listen": f"{host}:{port}"}
    if http_port is not None:
        config["http_port"] = http_port
    config["jetstream"] = {"store_dir": str(store_dir)} if store_dir is not None else {}
    config["accounts"] = accounts
    return config


ROUTE_USER = "route"


@dataclass(frozen=True)
class ClusterNode:
    """One node of the cluster as its peers reach it: its server name, host and route (cluster) port."""

    name: str
    host: str
    cluster_port: int = 6222

    def route_url(self, password: str) -> str:
        return f"nats://{quote(ROUTE_USER, safe='')}:{quote(password, safe='')}@{self.host}:{self.cluster_port}"


def cluster_node_config(
    config: Mapping[str, Any],
    node: ClusterNode,
    nodes: Sequence[ClusterNode],
    route_password: str,
    *,
    cluster_name: str = "weightflow",
    listen_host: str = "0.0.0.0",
    sync_interval: str | None = CLUSTER_SYNC_INTERVAL,
) -> dict[str, Any]:
    """`config` (from `build_config`) as `node` of the cluster `nodes`: its server name (JetStream's RAFT groups
    need one), a route listener that admits only the route user, routes to every other node, and the file store's
    sync policy (`shared.natsd.CLUSTER_SYNC_INTERVAL`: why "always" is written there).

    Every node has the same accounts and users, so a client may connect to any of them.
    """
    names = [n.name for n in nodes]
    if node.name not in names:
        raise ValueError(f"node {node.name!r} is not one of the cluster's nodes {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate node names in {names}: each nats-server needs its own server_name")
    if len(nodes) < 3:
        raise ValueError(f"a JetStream cluster needs at least 3 nodes for a quorum that survives one loss; got {names}")
    jetstream = dict(config.get("jetstream") or {})
    if sync_interval:
        jetstream["sync_interval"] = sync_interval
    return {
        "server_name": node.name,
        **{k: v for k, v in config.items() if k != "jetstream"},
        "jetstream": jetstream,
        "cluster": {
            "name": cluster_name,
            "listen": f"{listen_host}:{node.cluster_port}",
            "authorization": {"user": ROUTE_USER, "password": route_password},
            "routes": [peer.route_url(route_password) for peer in nodes if peer.name != node.name],
        },
    }


def parse_cluster_nodes(spec: str, cluster_port: int = 6222) -> list[ClusterNode]:
    """`name[:host[:port]],...` (host defaults to the name, as in compose) into nodes; a clear error otherwise."""
    nodes = []
    for item in (part.strip() for part in spec.split(",")):
        fields = item.split(":")
        if not item or len(fields) > 3 or not all(fields[:2]):
            raise ValueError(
                f"{item!r} in the cluster nodes is not name[:host[:route port]] (e.g. nats-1 or n1:10.0.0.5:6222)"
            )
        port = cluster_port
        if len(fields) == 3:
            if not fields[2].isdigit() or not 0 < int(fields[2]) < 65536:
                raise ValueError(f"{item!r}: the route port {fields[2]!r} is not a port number")
            port = int(fields[2])
        nodes.append(ClusterNode(fields[0], fields[1] if len(fields) > 1 else fields[0], port))
    return nodes


def read_route_password(config_file: Path) -> str | None:
    """The route password in a node config written by `render_config`, or None (so regenerating keeps it)."""
    if not config_file.exists():
        return None
    text = "\n".join(line for line in config_file.read_text().splitlines() if not line.startswith("#"))
    try:
        password = json.loads(text)["cluster"]["authorization"]["password"]
    except (ValueError, KeyError, TypeError):
        return None
    return password if isinstance(password, str) else None


def users_of(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """user name -> its entry, across the accounts."""
    return {u["user"]: u for account in config["accounts"].values() for u in account.get("users", [])}


def render_config(config: Mapping[str, Any]) -> str:
    """nats-server reads JSON as its config syntax (strings quoted, so `$JS...` is no variable)."""
    return (
        "# generated by `weightflow nats-config`; holds passwords: keep it private\n"
        + json.dumps(config, indent=2)
        + "\n"
    )


def nats_url(user: str, password: str, host: str | Sequence[str], port: int) -> str:
    """The user's URL for one host, or for several (a cluster's nodes: comma-separated, as WEIGHTFLOW_NATS_URL
    takes them, so a client reconnects to whichever survives)."""
    hosts = [host] if isinstance(host, str) else list(host)
    return ",".join(f"nats://{quote(user, safe='')}:{quote(password, safe='')}@{h}:{port}" for h in hosts)


def credentials_env(user: str, password: str, host: str | Sequence[str], port: int, *, service: bool) -> str:
    """A `.env` file for one user: its NATS URL, and for services the flag that leaves the stream alone."""
    lines = [f"WEIGHTFLOW_NATS_URL={nats_url(user, password, host, port)}"]
    if service:
        lines.append("WEIGHTFLOW_DECLARE_STREAM=false")
    return "\n".join(lines) + "\n"


def read_password(env_file: Path) -> str | None:
    """The password in a `.env` file written by `credentials_env`, or None."""
    if not env_file.exists():
        return None
    for line in env_file.read_text().splitlines():
        if line.startswith("WEIGHTFLOW_NATS_URL="):
            first = line.split("=", 1)[1].strip().split(",")[0]  # a cluster's URLs all carry the same password
            password = urlsplit(first).password
            return unquote(password) if password else None
    return None
