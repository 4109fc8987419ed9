"""NATS permissions of the scaled deployment, against a real nats-server started with the generated config.

A service user runs its real work (its own durable consumers, its own subjects) and is refused everything
else: other stages' subjects, other services' consumers, stream management, other inboxes. The alerting
user reads drift and canary outcomes and nothing more. The permissions table itself is checked against
what the handlers construct.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib
import inspect
import json
import os
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats
import pytest
from nats.js.api import ConsumerConfig

from weightflow.client import Client
from weightflow.contracts import topology
from weightflow.contracts.base import EVENT_TYPES, Event, parse_event
from weightflow.contracts.monitoring import DriftDetected
from weightflow.contracts.registry import RollbackRequested
from weightflow.contracts.requirements import RequirementsRejected, RequirementsSubmitted
from weightflow.contracts.workflow import DeadLettered
from weightflow.shared import nats_auth
from weightflow.shared.bus import Service
from weightflow.shared.bus.runtime import build_app
from weightflow.shared.nats_objects import NatsObjects
from weightflow.shared.natsd import EmbeddedNats, free_port
from weightflow.shared.settings import Settings

SERVICES = topology.SERVICES
SERVICE_DEFS = nats_auth.load_services(SERVICES)  # as the topology declares them: no service code loaded
# The services as they run, handlers and all (for the checks against their code and the real-work test).
BY_NAME = {name: importlib.import_module(f"weightflow.services.{name}.app").service for name in SERVICES}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-tickets" / "requirements.yaml"
DENIED_WAIT = 0.5  # seconds a refused JetStream API request waits for the reply that never comes


# -- the permissions table ---------------------------------------------------------------------------


def _constructed_events(service: Service) -> set[type[Event]]:
    """Event classes the modules of the service's handlers and periodics call or `.follow`: what they return
    (dead letters are the bus's, every service may send them). A service may keep handlers in several modules."""
    files = set()
    for fn in [*(h.fn for h in service.handlers), *(fn for _, fn in service.periodics)]:
        module = inspect.getmodule(fn)
        assert module is not None and module.__file__ is not None
        files.add(module.__file__)
    events = {cls.__name__: cls for cls in EVENT_TYPES.values()}
    found: set[type[Event]] = set()
    for node in (n for file in sorted(files) for n in ast.walk(ast.parse(Path(file).read_text()))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "follow":
            func = func.value
        if isinstance(func, ast.Name) and func.id in events:
            found.add(events[func.id])
    return found


@pytest.mark.parametrize("name", SERVICES)
def test_declared_publishes_match_what_handlers_emit(name: str) -> None:
    service = BY_NAME[name]
    assert set(service.stage.emits) == _constructed_events(service)
    service.check_complete()  # and it handles exactly what the topology says it consumes


def test_every_consumed_event_has_a_publisher() -> None:
    published = {e for s in SERVICE_DEFS for e in s.publishes}
    consumed = {e for s in SERVICE_DEFS for e in s.stage.consumes}
    assert consumed - published == set(topology.OPERATOR_EVENTS) - published


def test_generated_permissions_are_narrow() -> None:
    users = nats_auth.user_names(SERVICE_DEFS)
    config = nats_auth.build_config(SERVICE_DEFS, nats_auth.generate_passwords(users), store_dir=None)
    perms = {name: user["permissions"] for name, user in nats_auth.users_of(config).items()}
    assert len(set(nats_auth.generate_passwords(users).values())) == len(users)
    runs_reads = {"$JS.API.DIRECT.GET.WF_RUNS.wfruns.*", "$JS.API.STREAM.MSG.GET.WF_RUNS"}
    artifacts = set(nats_auth.artifact_subjects("WF_ARTIFACTS"))
    assert {s for s in artifacts if s.startswith("$O.")} == {"$O.WF_ARTIFACTS.C.*", "$O.WF_ARTIFACTS.M.*"}
    assert not [s for s in artifacts if re.search(r"\.(CREATE|UPDATE|DELETE|PURGE|CONSUMER)\b", s)]
    for service in SERVICE_DEFS:
        publish = perms[service.name]["publish"]["allow"]
        assert not [s for s in publish if s in (">", "$JS.>", "$JS.API.>", "$O.>")]
        assert artifacts <= set(publish), "every service reads and writes artifacts"
        stream_subjects = {s for s in publish if not s.startswith("$")}
        emitted: list[type[Event]] = [*service.publishes, DeadLettered]
        registers_runs = {"wfruns.*"} if service.name == "requirements" else set()
        assert stream_subjects == {e.subject() for e in emitted} | registers_runs, service.name
        own = {f".{stream}.{durable}" for stream, durable, _ in service.consumers(Settings())}
        api = [s for s in publish if s.startswith("$JS.") and s not in runs_reads | artifacts]
        assert api and all(any(o in s for o in own) for s in api), "only its own consumers"
        assert runs_reads <= set(publish)
        assert perms[service.name]["subscribe"] == {"allow": [f"_INBOX.{service.name}.>"]}
        account = config["accounts"][nats_auth.account_name(service.name)]
        assert "jetstream" not in account, "services reach JetStream only through their imports"
        assert {i["service"]["subject"] for i in account["imports"]} == {*publish, "$JS.API.INFO"}
    assert perms["alerting"] == {
        "publish": {"deny": [">"]},
        "subscribe": {"allow": sorted(e.subject() for e in topology.ALERTS)},
    }
    assert perms["serve"] == {  # reads artifacts, writes nothing, and hears only its own replies
        "publish": {"allow": nats_auth.artifact_read_subjects("WF_ARTIFACTS")},
        "subscribe": {"allow": ["_INBOX.serve.>"]},
    }
    assert not [s for s in perms["serve"]["publish"]["allow"] if s.startswith("$O.")], "serve stores nothing"


# -- a real server with the generated config ---------------------------------------------------------


@dataclass
class SecuredNats:
    server: EmbeddedNats
    passwords: dict[str, str]
    home: Path

    def url(self, user: str) -> str:
        return nats_auth.nats_url(user, self.passwords[user], "127.0.0.1", self.server.port)

    def settings(self, user: str, **update: Any) -> Settings:
        return Settings(home=self.home, nats_url=self.url(user), trace_file=False, **update)

    def violations(self) -> str:
        return "\n".join(line for line in self.server.log_file.read_text().splitlines() if "Violation" in line)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[SecuredNats]:
    port = free_port()
    passwords = nats_auth.generate_passwords(nats_auth.user_names(SERVICE_DEFS))
    config = nats_auth.build_config(SERVICE_DEFS, passwords, host="127.0.0.1", port=port,
                                    store_dir=tmp_path / "jetstream")
    config_file = tmp_path / "nats-server.conf"
    config_file.write_text(nats_auth.render_config(config))
    with EmbeddedNats(tmp_path / "nats", port=port, config_file=config_file) as server:
        secured = SecuredNats(server, passwords, tmp_path / "home")
        asyncio.run(_admin_creates_stream(secured))
        yield secured


async def _admin_creates_stream(secured: SecuredNats) -> None:
    async with Client(secured.settings("admin")):  # ensure_stream, as any CLI command does
        pass


@dataclass
class Conn:
    """A raw nats-py connection that records the permission errors the server sends it."""

    nc: Any = None
    errors: list[str] = field(default_factory=list)

    async def connect(self, url: str, **kwargs: Any) -> Conn:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, **kwargs)
        return self

    async def denied(self, verb: str, subject: str, timeout: float = 3.0) -> str:
        """Wait for the server's 'Permissions Violation for <verb> to "<subject>"' on this connection."""
        expected = f'permissions violation for {verb} to "{subject}"'.lower()
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            hits = [e for e in self.errors if expected in e.lower()]
            if hits:
                return hits[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {expected!r}; errors seen: {self.errors}")

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


async def _wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


def test_nobody_gets_in_without_a_password(secured: SecuredNats) -> None:
    async def scenario() -> None:
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(secured.server.url, allow_reconnect=False, max_reconnect_attempts=0,
                               connect_timeout=2)

    asyncio.run(scenario())


def test_service_runs_its_real_work_with_its_own_permissions(secured: SecuredNats) -> None:
    """The real requirements service, as user `requirements`: binds its consumers, handles, publishes, acks,
    dead-letters (a TERM ack plus a DeadLettered), all without one permission violation."""
    service = BY_NAME["requirements"]
    settings = secured.settings("requirements", declare_stream=False, ack_wait_s=5.0, max_deliver=2,
                                sweep_interval_s=0.5,
                                database_url=f"sqlite:///{secured.home.parent / 'requirements.db'}")

    async def scenario() -> None:
        app = build_app(service, settings)
        await app.start()
        try:
            async with Client(secured.settings("admin")) as admin:
                bad_doc = RequirementsSubmitted(run_id=uuid4(), document="deployment: [not, valid")
                await admin.publish(bad_doc)
                await admin.publish_raw(RequirementsSubmitted.subject(), b"not json", f"poison-{uuid4()}")

                async def answered() -> bool:
                    events = await admin.history()
                    return (any(isinstance(e, RequirementsRejected) and e.run_id == bad_doc.run_id for e in events)
                            and any(isinstance(e, DeadLettered) and e.service == "requirements" for e in events))

                await _wait_for(answered)
                for spec in service.handlers:  # its consumers exist and hold nothing unacked
                    info = await admin.js.consumer_info("WF", service.durable_name(spec.event_type))
                    assert info.num_ack_pending == 0 and info.num_pending == 0
                good = RequirementsSubmitted(run_id=uuid4(), document=EXAMPLE.read_text())
                await admin.publish(good)  # rejected (its data was never uploaded), but read and answered

                async def rejected() -> bool:
                    return any(isinstance(e, RequirementsRejected) and e.run_id == good.run_id
                               for e in await admin.history())

                await _wait_for(rejected)
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert secured.violations() == ""


def test_service_denied_outside_its_subjects(secured: SecuredNats) -> None:
    benchmark = BY_NAME["benchmark"]
    fitting = BY_NAME["fitting"]
    own_durable = "benchmark__requirements__accepted"
    other_durable = "fitting__benchmark__selection_decided"
    assert own_durable in {benchmark.durable_name(s.event_type) for s in benchmark.handlers}
    assert other_durable in {fitting.durable_name(s.event_type) for s in fitting.handlers}

    async def scenario() -> None:
        admin = await Conn().connect(secured.url("admin"))
        user = await Conn().connect(secured.url("benchmark"), inbox_prefix="_INBOX.benchmark")
        try:
            ajs, js = admin.nc.jetstream(), user.nc.jetstream()
            await ajs.add_consumer("WF", ConsumerConfig(durable_name=other_durable,
                                                        filter_subject="wf.benchmark.selection_decided"))
            await ajs.publish("wf.requirements.accepted", b"work for benchmark")
            await ajs.publish("wf.benchmark.selection_decided", b"work for fitting")

            # allowed: its own consumer (created with its own filter), fetch, ack; its own subjects
            sub = await js.pull_subscribe("wf.requirements.accepted", durable=own_durable, stream="WF",
                                          inbox_prefix=b"_INBOX.benchmark.")
            [msg] = await sub.fetch(1, timeout=5)
            assert msg.data == b"work for benchmark"
            await msg.ack_sync(timeout=5)  # the server confirms the ack
            ack = await js.publish("wf.benchmark.candidate_benchmarked", b"{}", timeout=5)
            assert ack.stream == "WF"
            await js.publish(DeadLettered.subject(), b"{}", timeout=5)
            assert user.errors == []

            # denied: another stage's subject, core and JetStream
            await user.nc.publish("wf.registry.model_registered", b"forged")
            await user.denied("publish", "wf.registry.model_registered")
            with pytest.raises(nats.errors.TimeoutError):
                await js.publish("wf.registry.model_registered", b"forged", timeout=DENIED_WAIT)

            # denied: looking up, binding and fetching from another service's durable consumer
            with pytest.raises(nats.errors.TimeoutError):
                await js.consumer_info("WF", other_durable, timeout=DENIED_WAIT)
            await user.denied("publish", f"$JS.API.CONSUMER.INFO.WF.{other_durable}")
            stolen = await js.pull_subscribe_bind(durable=other_durable, stream="WF",
                                                  inbox_prefix=b"_INBOX.benchmark.")
            with pytest.raises(nats.errors.TimeoutError):
                await stolen.fetch(1, timeout=DENIED_WAIT)
            await user.denied("publish", f"$JS.API.CONSUMER.MSG.NEXT.WF.{other_durable}")

            # denied: its own consumer redefined over another stage's events (the filter is in the subject) ...
            with pytest.raises(nats.errors.TimeoutError):
                await js.add_consumer("WF", ConsumerConfig(name=own_durable, durable_name=own_durable,
                                                           filter_subject="wf.registry.model_registered"),
                                      timeout=DENIED_WAIT)
            await user.denied("publish", f"$JS.API.CONSUMER.CREATE.WF.{own_durable}.wf.registry.model_registered")
            # ... or through the legacy create request, which does not name the filter
            with pytest.raises(nats.errors.TimeoutError):
                await js.add_consumer("WF", ConsumerConfig(durable_name="benchmark__sneaky", filter_subject="wf.>"),
                                      timeout=DENIED_WAIT)
            await user.denied("publish", "$JS.API.CONSUMER.DURABLE.CREATE.WF.benchmark__sneaky")
            # ... and the server refuses a permitted create subject whose body asks for another filter
            reply = await user.nc.request(
                f"$JS.API.CONSUMER.CREATE.WF.{own_durable}.wf.requirements.accepted",
                json.dumps({"stream_name": "WF", "config": {"name": own_durable, "durable_name": own_durable,
                                                             "filter_subject": "wf.>", "ack_policy": "explicit"}}
                           ).encode(), timeout=5)
            assert "error" in json.loads(reply.data), reply.data
            assert (await ajs.consumer_info("WF", own_durable)).config.filter_subject == "wf.requirements.accepted"

            # denied: stream management
            with pytest.raises(nats.errors.TimeoutError):
                await user.nc.jetstream(timeout=DENIED_WAIT).delete_stream("WF")
            await user.denied("publish", "$JS.API.STREAM.DELETE.WF")

            # denied: reading the stream's subjects directly, or other services' inboxes
            for subject in ("wf.>", "_INBOX.>", "_INBOX.fitting.>"):
                await user.nc.subscribe(subject)
                await user.denied("subscription", subject)

            # nothing leaked or changed: fitting's message is still waiting for fitting, the forgery was not stored
            info = await ajs.consumer_info("WF", other_durable)
            assert info.num_pending == 1 and info.delivered.consumer_seq == 0
            assert (await ajs.stream_info("WF")).config.name == "WF"
            with pytest.raises(nats.js.errors.NotFoundError):
                await ajs.get_last_msg("WF", "wf.registry.model_registered")
        finally:
            await user.close()
            await admin.close()

    asyncio.run(scenario())
    log = secured.violations()
    assert re.search(r'user:benchmark" - Publish Violation - .*"wf\.registry\.model_registered"', log)
    assert re.search(r'user:benchmark" - Publish Violation - .*"\$JS\.API\.STREAM\.DELETE\.WF"', log)
    assert "user:admin" not in log


def test_alerting_only_reads_drift_and_canary_outcomes(secured: SecuredNats) -> None:
    async def scenario() -> None:
        alerting = await Conn().connect(secured.url("alerting"))
        try:
            received: list[Event] = []

            async def on_msg(msg: Any) -> None:
                received.append(parse_event(msg.data))

            for cls in topology.ALERTS:
                await alerting.nc.subscribe(cls.subject(), cb=on_msg)
            await alerting.nc.flush()
            assert alerting.errors == []

            drift = DriftDetected(run_id=uuid4(), deployment="support-tickets", manifest_id="m1",
                                  kind="latency", baseline=10.0, observed=25.0, limit=20.0)
            async with Client(secured.settings("admin")) as admin:
                await admin.publish(RollbackRequested(run_id=uuid4(), deployment="support-tickets"))
                await admin.publish(drift)

            async def got_drift() -> bool:
                return bool(received)

            await _wait_for(got_drift, timeout=5)
            assert received == [drift]

            for subject in ("wf.>", "wf.registry.>", "wf.monitoring.>", "_INBOX.>"):
                await alerting.nc.subscribe(subject)
                await alerting.denied("subscription", subject)
            await alerting.nc.publish(DriftDetected.subject(), b"forged")
            await alerting.denied("publish", DriftDetected.subject())
            with pytest.raises(nats.errors.TimeoutError):  # no JetStream either (its reply inbox is refused too)
                await alerting.nc.jetstream(timeout=DENIED_WAIT).stream_info("WF")
            await alerting.denied("publish", "$JS.API.STREAM.INFO.WF")
        finally:
            await alerting.close()

    asyncio.run(scenario())


def test_reply_subject_injection_is_contained(secured: SecuredNats) -> None:
    """A service user sets the reply subject of its own (permitted) publishes and JetStream requests to
    another stage's subject: JetStream's answer goes back into the user's own account, where nobody
    listens; nothing is written onto that subject or stored in the stream."""

    async def scenario() -> None:
        admin = await Conn().connect(secured.url("admin"))
        user = await Conn().connect(secured.url("fitting"), inbox_prefix="_INBOX.fitting")
        try:
            ajs, js = admin.nc.jetstream(), user.nc.jetstream()
            seen: list[str] = []

            async def watch(msg: Any) -> None:
                seen.append(msg.subject)

            await admin.nc.subscribe("wf.registry.>", cb=watch)
            await admin.nc.flush()
            before = (await ajs.stream_info("WF")).state.messages
            target = "wf.registry.model_registered"
            await user.nc.publish("wf.fitting.failed", b"{}", reply=target)  # allowed publish, forged reply
            await user.nc.publish("$JS.API.INFO", b"", reply=target)
            durable = "fitting__benchmark__selection_decided"
            await user.nc.publish(f"$JS.API.CONSUMER.INFO.WF.{durable}", b"", reply=target)
            await user.nc.flush()
            await asyncio.sleep(1.0)
            after = (await ajs.stream_info("WF")).state.messages
            assert after == before + 1, "only the permitted publish itself is stored"
            assert seen == [], f"JetStream answered onto {seen}"
            with pytest.raises(nats.js.errors.NotFoundError):
                await ajs.get_last_msg("WF", target)
            ack = await js.publish("wf.fitting.failed", b"{}", timeout=5)  # its normal JetStream use still works
            assert ack.stream == "WF"
        finally:
            await user.close()
            await admin.close()

    asyncio.run(scenario())


# -- the artifact bucket (JetStream Object Store) ----------------------------------------------------

BUCKET = Settings().artifact_bucket


def _artifact(folder: Path, size: int) -> tuple[str, Path]:
    """A file of `size` random bytes and its artifact name (its sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path = folder / f"{uuid4()}.bin"
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), path


def _bucket(urls: list[str], user: str = "admin", *, create: bool = False, replicas: int = 1) -> NatsObjects:
    # As the runtime opens it (open_store with the service's inbox prefix). Small chunks, so a few KiB take several
    # chunk publishes and direct gets; short deadlines, so a refusal (which JetStream answers with silence) fails
    # the test in seconds, not minutes.
    inbox = BY_NAME[user].inbox_prefix() if user in BY_NAME else "_INBOX"
    return NatsObjects(urls, BUCKET, replicas=replicas, create=create, request_timeout_s=5.0, stall_s=30.0,
                       chunk_size=1024, inbox_prefix=inbox)


def _fetched(objects: NatsObjects, name: str, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{uuid4()}.got"
    digest = objects.get(name, dest)
    assert dest.stat().st_size > 0
    return digest


def test_every_service_puts_and_gets_artifacts(secured: SecuredNats, tmp_path: Path) -> None:
    """As the object-store backend runs them (WEIGHTFLOW_ARTIFACT_BACKEND=nats, WEIGHTFLOW_DECLARE_STREAM=false):
    the admin creates the bucket; then each service user stores its own artifact and reads the admin's and the
    previous service's, chunk by chunk, without one permission violation."""
    admin = _bucket([secured.url("admin")], create=True)
    opened = [admin]
    try:
        first, path = _artifact(tmp_path / "admin", 5000)
        admin.put(first, path)
        previous = first
        for name in SERVICES:
            objects = _bucket([secured.url(name)], name)
            opened.append(objects)
            own, path = _artifact(tmp_path / name, 3000)
            objects.put(own, path)
            assert objects.has(own) and objects.has(previous)
            assert _fetched(objects, first, tmp_path / name) == first
            assert _fetched(objects, previous, tmp_path / name) == previous
            previous = own
        assert _fetched(admin, previous, tmp_path / "admin") == previous
    finally:
        for objects in opened:
            objects.close()
    assert secured.violations() == ""


def test_service_denied_what_the_bucket_does_not_need(secured: SecuredNats, tmp_path: Path) -> None:
    """A service user may not purge, delete or create buckets, read the bucket through a consumer, write into
    another bucket or listen on the bucket's subjects; the alerting user may not even open it."""
    admin_objects = _bucket([secured.url("admin")], create=True)
    try:
        name, path = _artifact(tmp_path, 2000)
        admin_objects.put(name, path)
    finally:
        admin_objects.close()
    stream = f"OBJ_{BUCKET}"

    async def scenario() -> None:
        user = await Conn().connect(secured.url("tuning"), inbox_prefix="_INBOX.tuning")
        alerting = await Conn().connect(secured.url("alerting"))
        try:
            js = user.nc.jetstream(timeout=DENIED_WAIT)
            assert (await user.nc.jetstream(timeout=5).stream_info(stream)).state.messages > 0  # allowed
            for call, subject in (
                (js.purge_stream(stream), f"$JS.API.STREAM.PURGE.{stream}"),
                (js.delete_stream(stream), f"$JS.API.STREAM.DELETE.{stream}"),
                (js.create_object_store("STOLEN"), "$JS.API.STREAM.CREATE.OBJ_STOLEN"),
                (user.nc.request(f"$JS.API.CONSUMER.CREATE.{stream}", b"{}", timeout=DENIED_WAIT),
                 f"$JS.API.CONSUMER.CREATE.{stream}"),
            ):
                with pytest.raises(nats.errors.TimeoutError):
                    await call
                await user.denied("publish", subject)
            await user.nc.publish("$O.STOLEN.C.x", b"x")
            await user.denied("publish", "$O.STOLEN.C.x")
            await user.nc.subscribe(f"$O.{BUCKET}.>")
            await user.denied("subscription", f"$O.{BUCKET}.>")
            with pytest.raises(nats.errors.TimeoutError):
                await alerting.nc.jetstream(timeout=DENIED_WAIT).stream_info(stream)
            await alerting.denied("publish", f"$JS.API.STREAM.INFO.{stream}")
        finally:
            await alerting.close()
            await user.close()

    asyncio.run(scenario())
    readback = _bucket([secured.url("admin")])
    try:
        assert readback.has(name), "the refused purge and delete changed nothing"
    finally:
        readback.close()


def test_serve_reads_artifacts_as_the_serve_user(secured: SecuredNats, tmp_path: Path) -> None:
    """`weightflow serve` with the object-store backend, connected as the generated `serve` user: the store its
    LiveDeployment opens reads (and verifies) an artifact the admin stored, on serve's own inbox, without a
    permission violation; storing one, or listening on another's inbox, is refused."""
    from weightflow.serving.live import LiveDeployment
    from weightflow.shared.artifacts import open_store

    data = json.dumps({"weights": uuid4().hex * 200}).encode()  # the store takes only safetensors, JSON and text
    admin = open_store(secured.settings("admin", artifact_backend="nats", artifacts_dir=tmp_path / "admin"))
    digest = admin.put_bytes(data)
    served = secured.settings("serve", artifact_backend="nats", declare_stream=False, artifacts_dir=tmp_path / "serve")
    live = LiveDeployment(served, "ticket-router", pinned="0" * 64)
    try:
        assert live.store.read_bytes(digest) == data
    finally:
        for store in (admin, live.store):
            assert store.remote is not None
            store.remote.close()  # type: ignore[attr-defined]
    assert secured.violations() == ""

    async def scenario() -> None:
        serve = await Conn().connect(secured.url("serve"), inbox_prefix=nats_auth.SERVE_INBOX_PREFIX)
        try:
            await serve.nc.publish(f"$O.{BUCKET}.C.x", b"x")
            await serve.denied("publish", f"$O.{BUCKET}.C.x")
            await serve.nc.subscribe("_INBOX.registry.>")
            await serve.denied("subscription", "_INBOX.registry.>")
        finally:
            await serve.close()

    asyncio.run(scenario())


# -- a three-node cluster from the generated per-node configs -----------------------------------------


@pytest.mark.cluster
def test_generated_cluster_config_runs_a_secured_cluster(tmp_path: Path) -> None:
    """`weightflow nats-config --cluster-nodes` as three loopback nodes: they form one JetStream cluster over
    password-protected routes; the admin creates the streams and the bucket with 3 replicas; a service user
    stores an artifact that another reads back after the node leading the bucket's stream is SIGKILLed."""
    names = ["n1", "n2", "n3"]
    client_ports = {n: free_port() for n in names}
    nodes = [nats_auth.ClusterNode(n, "127.0.0.1", free_port()) for n in names]
    passwords = nats_auth.generate_passwords(nats_auth.user_names(SERVICE_DEFS))
    route_password = nats_auth.generate_passwords([nats_auth.ROUTE_USER])[nats_auth.ROUTE_USER]
    servers: dict[str, EmbeddedNats] = {}
    for node in nodes:
        config = nats_auth.build_config(SERVICE_DEFS, passwords, host="127.0.0.1", port=client_ports[node.name],
                                        store_dir=tmp_path / node.name / "jetstream")
        node_config = nats_auth.cluster_node_config(config, node, nodes, route_password, listen_host="127.0.0.1")
        assert node_config["jetstream"]["sync_interval"] == "always"
        config_file = tmp_path / node.name / "nats-server.conf"
        config_file.parent.mkdir(parents=True)
        config_file.write_text(nats_auth.render_config(node_config))
        servers[node.name] = EmbeddedNats(tmp_path / node.name, port=client_ports[node.name], config_file=config_file)

    def url(user: str) -> list[str]:
        return [nats_auth.nats_url(user, passwords[user], "127.0.0.1", client_ports[n]) for n in names]

    opened: list[NatsObjects] = []
    try:
        for server in servers.values():
            server.start()
        deadline = time.monotonic() + 60
        while not all(server.health().ok for server in servers.values()):
            assert time.monotonic() < deadline, "the generated cluster did not become healthy within 60 s"
            time.sleep(0.2)
        admin_settings = Settings(home=tmp_path / "home", nats_url=",".join(url("admin")), trace_file=False,
                                  stream_replicas=3)

        async def admin_creates_streams() -> str:
            async with Client(admin_settings):
                pass
            nc = await nats.connect(url("admin"))
            try:
                info = await nc.jetstream().stream_info("WF")
                assert info.cluster is not None and len(info.cluster.replicas or []) == 2
                return info.cluster.leader or ""
            finally:
                await nc.close()

        asyncio.run(admin_creates_streams())
        admin = _bucket(url("admin"), create=True, replicas=3)
        writer, reader = _bucket(url("registry"), "registry"), _bucket(url("monitoring"), "monitoring")
        opened += [admin, writer, reader]
        seed, path = _artifact(tmp_path / "admin", 3000)
        admin.put(seed, path)
        name, path = _artifact(tmp_path / "registry", 6000)
        writer.put(name, path)
        assert _fetched(reader, name, tmp_path / "monitoring") == name

        async def bucket_leader() -> str:
            nc = await nats.connect(url("admin"))
            try:
                info = await nc.jetstream().stream_info(f"OBJ_{BUCKET}")
                assert info.cluster is not None and len(info.cluster.replicas or []) == 2
                return info.cluster.leader or ""
            finally:
                await nc.close()

        routes_before = _routes(servers["n1"])
        rogue_conf = tmp_path / "rogue" / "nats-server.conf"  # a node that knows the routes but not their password
        rogue_conf.parent.mkdir()
        routes = [f"nats://127.0.0.1:{n.cluster_port}" for n in nodes]
        rogue_conf.write_text(json.dumps({
            "server_name": "rogue", "jetstream": {"store_dir": str(tmp_path / "rogue")},
            "cluster": {"name": "weightflow", "listen": f"127.0.0.1:{free_port()}", "routes": routes}}))
        with EmbeddedNats(tmp_path / "rogue", config_file=rogue_conf):
            time.sleep(2.0)
            assert _routes(servers["n1"]) == routes_before, "a node without the route password joined the cluster"
        assert "Router connection closed: Authentication Failure" in servers["n1"].log_file.read_text()

        leader = asyncio.run(bucket_leader())
        servers[leader].stop(kill=True)
        assert _fetched(reader, name, tmp_path / "monitoring") == name
        after, path = _artifact(tmp_path / "registry", 4000)
        writer.put(after, path)  # on the two survivors, once they elect a leader
        assert _fetched(reader, after, tmp_path / "monitoring") == after
    finally:
        for objects in opened:
            objects.close()
        for server in servers.values():
            server.stop()
    log = "\n".join(server.log_file.read_text() for server in servers.values())
    assert "Permissions Violation" not in log and "Publish Violation" not in log


def _routes(server: EmbeddedNats) -> set[str]:
    """The names of the nodes `server` has routes to (its monitoring endpoint's /routez)."""
    with urllib.request.urlopen(f"{server.monitor_url}/routez", timeout=5) as response:
        return {r.get("remote_name", r.get("remote_id")) for r in json.load(response).get("routes") or []}


def test_nats_config_writes_one_config_per_cluster_node(tmp_path: Path) -> None:
    """The CLI's --cluster-nodes: one config per node (its name, routes to the others, the same users), .env files
    whose URLs list every node; a second run keeps every password, the route password included."""
    from typer.testing import CliRunner

    from weightflow.cli import app

    out = tmp_path / "nats" / "nats-server.conf"
    args = ["nats-config", "--out", str(out), "--cluster-nodes", "nats-1,nats-2,nats-3:10.0.0.9:7222"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    configs = {n: _read_config(out.parent / f"{n}.conf") for n in ("nats-1", "nats-2", "nats-3")}
    assert not out.exists()
    route_password = configs["nats-1"]["cluster"]["authorization"]["password"]
    assert configs["nats-2"]["server_name"] == "nats-2"
    assert configs["nats-2"]["cluster"]["routes"] == [
        f"nats://route:{route_password}@nats-1:6222", f"nats://route:{route_password}@10.0.0.9:7222"]
    assert configs["nats-3"]["cluster"]["listen"] == "0.0.0.0:7222"
    assert all(c["accounts"] == configs["nats-1"]["accounts"] for c in configs.values())
    env = (out.parent / "registry.env").read_text()
    password = nats_auth.read_password(out.parent / "registry.env")
    assert password
    urls = nats_auth.nats_url("registry", password, ["nats-1", "nats-2", "10.0.0.9"], 4222)
    assert f"WEIGHTFLOW_NATS_URL={urls}\n" in env and urls.count("nats://") == 3
    assert (out.parent / "nats-1.conf").stat().st_mode & 0o077 == 0, "the configs hold passwords"

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert _read_config(out.parent / "nats-1.conf") == configs["nats-1"]
    refused = CliRunner().invoke(app, [*args[:3], "--cluster-nodes", "nats-1,nats-2"])
    assert refused.exit_code == 2 and "at least 3 nodes" in " ".join(refused.output.replace("│", " ").split())


def _read_config(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads("\n".join(line for line in path.read_text().splitlines()
                                                  if not line.startswith("#")))
    return config
