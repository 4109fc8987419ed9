"""The bus promises, against a real nats-server and a real database (one in-process service per test).

Duplicates change nothing, a failing handler is retried and then succeeds, poison is dead-lettered with
its reason while the rest flows on; and the second reliability round: no message can wedge the service
(too big, too deep, a dead letter that cannot be written, an outbox row that cannot be published),
nothing vanishes without a dead letter, events with no history are orphans, and no model work holds a
database transaction open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import text
from sqlmodel import Field, Session, SQLModel, select

from weightflow.client import Client
from weightflow.contracts.base import Event, parse_event, register
from weightflow.contracts.topology import Stage
from weightflow.contracts.workflow import DeadLettered
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.bus import HandlerContext, HandlerResult, Service
from weightflow.shared.bus.runtime import build_app
from weightflow.shared.db import DeadLetterRecord, InboxRecord, OutboxRecord, make_engine
from weightflow.shared.settings import Settings
from weightflow.submission import prepare

from ..conftest import EXAMPLE_DIR


@register
class Ping(Event):
    STAGE = "test"
    NAME = "ping"
    n: int


@register
class Pong(Event):
    STAGE = "test"
    NAME = "pong"
    n: int


class Effect(SQLModel, table=True):
    __tablename__ = "test_effects"
    id: int | None = Field(default=None, primary_key=True)
    n: int


def service(name: str, handler: Callable[[Ping, HandlerContext], HandlerResult], *,
            requires_run: bool = False) -> Service:
    svc = Service(name, declared=Stage(0, name, "test", consumes=(Ping,), emits=(Pong,)))
    svc.handles(Ping, requires_run=requires_run)(handler)
    return svc


def effect(event: Ping) -> HandlerResult:
    def commit(session: Session) -> Sequence[Event]:
        session.add(Effect(n=event.n))
        return [Pong.follow(event, n=event.n)]

    return commit


def make_service(failures: dict[int, int]) -> Service:
    def on_ping(event: Ping, ctx: HandlerContext) -> HandlerResult:
        if failures.get(event.n, 0) > 0:
            failures[event.n] -= 1
            raise RuntimeError(f"transient failure for {event.n}")
        return effect(event)

    return service("pinger", on_ping)


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


class Collector:
    """Every event on the bus, as the workflow's own readers would see it."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def attach(self, client: Client) -> None:
        async def collect(msg: Any) -> None:
            with contextlib.suppress(ValueError):
                self.events.append(parse_event(msg.data))

        await client.nc.subscribe("wf.>", cb=collect)

    def of(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


def rows(settings: Settings, model: type[SQLModel]) -> list[Any]:
    with Session(make_engine(settings.resolved_database_url())) as session:
        return list(session.exec(select(model)))


def test_duplicates_retries_and_poison(settings: Settings, database_url: str) -> None:
    settings = settings.model_copy(update={"max_deliver": 3, "ack_wait_s": 5.0, "database_url": database_url,
                                           "retry_backoff_cap_s": 1.0})
    failures = {2: 1}
    svc = make_service(failures)
    seen = Collector()

    async def scenario() -> None:
        app = build_app(svc, settings)
        await app.start()
        try:
            async with Client(settings) as client:
                await seen.attach(client)
                once = Ping(run_id=uuid4(), n=1)
                for _ in range(3):  # the same event three times: JetStream drops two by Nats-Msg-Id
                    await client.publish(once)
                # the same event under another message id reaches the handler: the inbox drops it
                await client.publish(once, msg_id=f"{once.event_id}-again")
                await client.publish(Ping(run_id=uuid4(), n=2))  # fails once, then succeeds
                await client.publish_raw(Ping.subject(), b'{"event_type": "test.ping", "n": "not a number"}', "poison")
                future = json.loads(Ping(run_id=uuid4(), n=4).to_bytes()) | {"schema_version": 99}
                await client.publish_raw(Ping.subject(), json.dumps(future).encode(), "from-the-future")
                await client.publish(Ping(run_id=uuid4(), n=3))
                await wait_for(lambda: {p.n for p in seen.of(Pong)} == {1, 2, 3} and len(seen.of(DeadLettered)) == 2)
                await asyncio.sleep(1.0)  # a late duplicate would show up here
                assert sorted(p.n for p in seen.of(Pong)) == [1, 2, 3]
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert failures[2] == 0
    assert {e.n for e in rows(settings, Effect)} == {1, 2, 3} and len(rows(settings, Effect)) == 3
    assert len([r for r in rows(settings, InboxRecord) if r.service == "pinger"]) == 3
    letter, future_letter = sorted(rows(settings, DeadLetterRecord), key=lambda r: r.id)
    assert letter.reason == "invalid" and "n" in letter.error and letter.deliveries == 1
    store = ArtifactStore(settings.resolved_artifacts_dir())
    assert letter.payload_digest and b"not a number" in store.read_quarantined(letter.payload_digest)
    assert letter.stream_sequence is not None
    assert "schema_version 99 is newer than this service understands" in future_letter.error


def slow_service(started: threading.Event, seconds: float, calls: list[int]) -> Service:
    def on_ping(event: Ping, ctx: HandlerContext) -> HandlerResult:
        calls.append(event.n)
        started.set()
        time.sleep(seconds)
        return effect(event)

    return service("sleeper", on_ping)


def test_shutdown_finishes_quick_work_and_naks_the_rest(settings: Settings) -> None:
    """SIGTERM's path: work that ends within the grace period is acked; longer work is NAKed at once,
    redelivered to the next instance well before ack_wait, and its side effect still happens once."""
    settings = settings.model_copy(update={"ack_wait_s": 60.0, "shutdown_grace_s": 1.5})
    calls_a: list[int] = []
    calls_b: list[int] = []

    async def scenario() -> float:
        started = threading.Event()
        app = build_app(slow_service(started, 0.5, calls_a), settings)
        await app.start()
        async with Client(settings) as client:
            await client.publish(Ping(run_id=uuid4(), n=1))  # finishes inside the grace period
            await wait_for(started.is_set)
            started.clear()
            await app.stop()
            assert calls_a == [1]
            app = build_app(slow_service(started, 6.0, calls_a), settings)
            await app.start()
            await client.publish(Ping(run_id=uuid4(), n=2))  # outlives the grace period
            await wait_for(started.is_set)
            stopped_at = time.monotonic()
            await app.stop()
            app = build_app(slow_service(threading.Event(), 0.0, calls_b), settings)
            await app.start()
            try:
                await wait_for(lambda: 2 in calls_b, timeout=15)
                redelivered_after = time.monotonic() - stopped_at
                await asyncio.sleep(7.0)  # the abandoned first attempt finishes and meets the inbox row
            finally:
                await app.stop()
            return redelivered_after

    redelivered_after = asyncio.run(scenario())
    assert calls_a == [1, 2] and calls_b == [2], "quick work was not redelivered; slow work was, once"
    assert redelivered_after < settings.ack_wait_s / 2, "NAKed on shutdown, not left to time out"
    assert sorted(e.n for e in rows(settings, Effect)) == [1, 2]


def test_the_bus_counts_deliveries_itself(settings: Settings) -> None:
    """A handler that kills its process every time never acks; JetStream never gives up (no max_deliver),
    and the next delivery past the budget is dead-lettered by the bus without running the handler,
    carrying the run id so `status` shows the run failed."""
    settings = settings.model_copy(update={"max_deliver": 2, "ack_wait_s": 1.0})
    calls: list[int] = []

    def on_ping(event: Ping, ctx: HandlerContext) -> HandlerResult:
        calls.append(event.n)
        return effect(event)

    svc = service("crasher", on_ping)

    async def scenario() -> tuple[int, Ping]:
        app = build_app(svc, settings)
        await app.start()  # declares the stream and the durable consumers, as a deployed service would
        await app.stop()
        async with Client(settings) as client:
            # A run is what requirements start (`status` shows runs only): the poison is part of one.
            started = prepare(EXAMPLE_DIR / "requirements.yaml", ArtifactStore(settings.resolved_artifacts_dir())).event
            await client.publish(started)
            poison = Ping(run_id=started.run_id, n=7)
            await client.publish(poison)
            crashing = await client.js.pull_subscribe(Ping.subject(), durable=svc.durable_name(Ping),
                                                      stream=settings.stream)
            for _ in range(settings.max_deliver):  # fetched, then the "process dies" before acking
                (msg,) = await crashing.fetch(1, timeout=10)
                sequence: int = msg.metadata.sequence.stream
                await asyncio.sleep(settings.ack_wait_s + 0.5)
            await crashing.unsubscribe()
            app = build_app(svc, settings)
            await app.start()
            try:
                await wait_for(lambda: bool(rows(settings, DeadLetterRecord)), timeout=20)
            finally:
                await app.stop()
            return sequence, poison

    sequence, poison = asyncio.run(scenario())
    (letter,) = rows(settings, DeadLetterRecord)
    assert letter.reason == "exhausted" and letter.stream_sequence == sequence
    assert letter.run_id == str(poison.run_id) and letter.deliveries == settings.max_deliver + 1
    assert calls == [] and not rows(settings, Effect)

    from typer.testing import CliRunner

    from weightflow.cli import app as cli

    env = {"WEIGHTFLOW_HOME": str(settings.home), "WEIGHTFLOW_NATS_URL": str(settings.nats_url)}
    listed = CliRunner().invoke(cli, ["dlq", "ls", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    shown = CliRunner().invoke(cli, ["dlq", "show", entry["event_id"][:8]], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(json.loads(shown.output)["payload"])["n"] == 7, "the payload was kept by digest"
    status = CliRunner().invoke(cli, ["status", str(poison.run_id)[:8]], env=env)
    assert status.exit_code == 0 and "failed" in status.output and "exhausted" in status.output, status.output


def test_no_message_can_wedge_the_service(settings: Settings) -> None:
    """A payload just under NATS's max_payload, one nested 200k deep, and an outbox row too big to ever be
    published: each is set aside with its reason (the dead letter itself stays small), and every later
    event still flows. CLI readers skip the bomb and say so."""
    settings = settings.model_copy(update={"max_deliver": 3})

    def on_ping(event: Ping, ctx: HandlerContext) -> HandlerResult:
        return effect(event)

    svc = service("sturdy", on_ping)
    seen = Collector()

    async def scenario() -> None:
        app = build_app(svc, settings)
        await app.start()
        try:
            async with Client(settings) as client:
                await seen.attach(client)
                await client.publish(Ping(run_id=uuid4(), n=1))
                await wait_for(lambda: len(seen.of(Pong)) == 1)
                huge = b'{"event_type": "test.ping", "n": "' + b"9" * (1024 * 1024 - 600) + b'"}'
                await client.publish_raw(Ping.subject(), huge, "huge")
                await client.publish_raw(Ping.subject(), b"[" * 200_000 + b"]" * 200_000, "bomb")
                assert svc_engine() is not None
                with Session(svc_engine()) as session:  # a row the server will refuse: 2 MiB
                    session.add(OutboxRecord(event_id=str(uuid4()), service="sturdy", subject=Pong.subject(),
                                             payload=b"x" * (2 * 1024 * 1024)))
                    session.commit()
                await client.publish(Ping(run_id=uuid4(), n=2))
                await wait_for(lambda: {p.n for p in seen.of(Pong)} == {1, 2} and len(seen.of(DeadLettered)) == 2,
                               timeout=30)
        finally:
            await app.stop()

    def svc_engine() -> Any:
        return make_engine(settings.resolved_database_url())

    asyncio.run(scenario())
    letters = seen.of(DeadLettered)
    assert all(len(letter.to_bytes()) < 8 * 1024 for letter in letters), "dead letters stay small"
    errors = [letter.error for letter in letters]
    assert any("cap" in e for e in errors) and any("not JSON" in e or "nest" in e for e in errors), errors
    (parked,) = [r for r in rows(settings, OutboxRecord) if r.parked_at is not None]
    assert parked.last_error and "payload" in parked.last_error.lower()

    from typer.testing import CliRunner

    from weightflow.cli import app as cli

    env = {"WEIGHTFLOW_HOME": str(settings.home), "WEIGHTFLOW_NATS_URL": str(settings.nats_url)}
    for command in (["runs"], ["events"], ["dlq", "ls"], ["registry", "ls"], ["status"]):
        result = CliRunner().invoke(cli, command, env=env)
        assert result.exit_code == 0 and "Traceback" not in result.output, (command, result.output)
    assert "skipped" in CliRunner().invoke(cli, ["events"], env=env).output
    doctor = CliRunner().invoke(cli, ["doctor"], env=env)
    assert doctor.exit_code == 1 and "parked" in doctor.output and "dead letter" in doctor.output, doctor.output


def test_a_dead_letter_that_cannot_be_written_is_retried_not_lost(settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills: the dead-letter write fails too. The message is NAKed, not acked or dropped, and is
    dead-lettered once the write succeeds again."""
    import weightflow.shared.bus.runtime as runtime

    settings = settings.model_copy(update={"retry_backoff_cap_s": 0.5})
    real = runtime.write_dead_letter
    failures = {"left": 3}

    def full_disk(*args: Any, **kwargs: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "write_dead_letter", full_disk)
    svc = service("diskfull", lambda event, ctx: effect(event))

    async def scenario() -> None:
        app = build_app(svc, settings)
        await app.start()
        try:
            async with Client(settings) as client:
                await client.publish_raw(Ping.subject(), b'{"event_type": "test.ping", "n": []}', "bad")
                await wait_for(lambda: bool(rows(settings, DeadLetterRecord)), timeout=30)
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert failures["left"] == 0
    (letter,) = rows(settings, DeadLetterRecord)
    assert letter.reason == "invalid" and letter.deliveries == 4


def test_the_sweeper_records_what_jetstream_dropped(settings: Settings) -> None:
    """A message terminated behind the bus's back (here a rogue TERM on the service's own consumer) would
    vanish: the sweeper finds it past the ack floor with no handled or dead-letter record."""
    settings = settings.model_copy(update={"sweep_interval_s": 0.5})
    svc = service("swept", lambda event, ctx: effect(event))

    async def scenario() -> Ping:
        app = build_app(svc, settings)
        await app.start()
        await app.stop()
        async with Client(settings) as client:
            lost = Ping(run_id=uuid4(), n=5)
            await client.publish(lost)
            rogue = await client.js.pull_subscribe(Ping.subject(), durable=svc.durable_name(Ping),
                                                   stream=settings.stream)
            (msg,) = await rogue.fetch(1, timeout=10)
            await msg.term()
            await rogue.unsubscribe()
            await client.publish(Ping(run_id=uuid4(), n=6))
            app = build_app(svc, settings)
            await app.start()
            try:
                await wait_for(lambda: bool(rows(settings, DeadLetterRecord)), timeout=20)
            finally:
                await app.stop()
            return lost

    lost = asyncio.run(scenario())
    (letter,) = rows(settings, DeadLetterRecord)
    assert letter.reason == "vanished" and letter.run_id == str(lost.run_id) and letter.event_id == str(lost.event_id)
    assert [e.n for e in rows(settings, Effect)] == [6]


def test_events_with_no_history_are_orphans_and_forged_advisories_do_nothing(settings: Settings) -> None:
    calls: list[int] = []

    def on_ping(event: Ping, ctx: HandlerContext) -> HandlerResult:
        calls.append(event.n)
        return effect(event)

    svc = service("skeptic", on_ping, requires_run=True)

    async def scenario() -> None:
        app = build_app(svc, settings)
        await app.start()
        try:
            async with Client(settings) as client:
                await client.publish(Ping(run_id=uuid4(), n=1))
                advisory = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.WF.skeptic__test__ping"
                await client.nc.publish(advisory, b'{"stream_seq": 1, "deliveries": 9}')
                await client.nc.publish(advisory, b"garbage")
                await wait_for(lambda: bool(rows(settings, DeadLetterRecord)), timeout=20)
                await asyncio.sleep(1.0)
        finally:
            await app.stop()

    asyncio.run(scenario())
    (letter,) = rows(settings, DeadLetterRecord)
    assert letter.reason == "orphan" and letter.deliveries == 1 and "no history" in letter.error
    assert calls == []


def test_model_work_holds_no_transaction(settings: Settings, database_url: str) -> None:
    """Compute, then commit: while a handler works (here it sleeps), its service has no open transaction;
    on PostgreSQL that means no idle-in-transaction session."""
    if not database_url.startswith("postgresql"):
        pytest.skip("idle-in-transaction is a PostgreSQL session state")
    settings = settings.model_copy(update={"database_url": database_url})
    working = threading.Event()

    def on_ping(event: Ping, ctx: HandlerContext) -> HandlerResult:
        ctx.read(lambda session: session.exec(select(Effect)).all())  # a short read first
        working.set()
        time.sleep(2.0)  # the model work
        return effect(event)

    svc = service("careful", on_ping)
    states: list[str] = []

    async def scenario() -> None:
        app = build_app(svc, settings)
        await app.start()
        try:
            async with Client(settings) as client:
                await client.publish(Ping(run_id=uuid4(), n=1))
                await wait_for(working.is_set)
                engine = make_engine(database_url)
                name = database_url.rsplit("/", 1)[1]
                for _ in range(5):
                    with engine.connect() as conn:
                        states.extend(r[0] for r in conn.execute(text(
                            "SELECT state FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                            {"d": name}))
                    await asyncio.sleep(0.2)
                await wait_for(lambda: bool(rows(settings, Effect)))
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert states and "idle in transaction" not in states, states


def test_a_consumer_that_stops_pulling_is_bound_again(settings: Settings) -> None:
    """A pull loop that ended (as one lost in a broker restart would) leaves its work waiting on the stream; the
    runtime notices the consumer holding work that nobody fetches and binds it again, and the work flows on."""
    from prometheus_client import REGISTRY

    from weightflow.shared.bus.runtime import ServiceRuntime

    settings = settings.model_copy(update={"consumer_stall_s": 2.0, "metrics_interval_s": 0.3, "ack_wait_s": 5.0})
    runtime = ServiceRuntime(make_service({}), settings)
    seen = Collector()
    labels = {"service": "pinger", "event": Ping.type_name()}
    before = REGISTRY.get_sample_value("weightflow_consumer_rebinds_total", labels) or 0.0

    async def scenario() -> None:
        app = runtime.build()
        await app.start()
        try:
            async with Client(settings) as client:
                await seen.attach(client)
                await client.publish(Ping(run_id=uuid4(), n=1))
                await wait_for(lambda: len(seen.of(Pong)) == 1)
                # Cancelled, the pull loop is gone for good: faststream restarts a loop that failed, not one cancelled.
                (subscriber,) = runtime.subscribers.values()
                for task in subscriber.tasks:
                    task.cancel()
                await asyncio.sleep(1.5)  # its last pull request expires (1 s): the server would fill it
                await client.publish(Ping(run_id=uuid4(), n=2))
                await asyncio.sleep(1.0)
                assert len(seen.of(Pong)) == 1, "nothing pulls the second event until the consumer is bound again"
                await wait_for(lambda: len(seen.of(Pong)) == 2, timeout=30)
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert (REGISTRY.get_sample_value("weightflow_consumer_rebinds_total", labels) or 0.0) == before + 1
    assert sorted(e.n for e in rows(settings, Effect)) == [1, 2]
