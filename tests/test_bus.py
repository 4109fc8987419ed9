"""The bus promises, against a real nats-server and a real SQLite file (one in-process service).

Duplicates change nothing, a failing handler is retried and then succeeds, a poison message is
dead-lettered with its error while the rest flows on.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from uuid import uuid4

from sqlmodel import Field, Session, SQLModel, select

from contracts.base import Event, register
from contracts.workflow import DeadLettered
from shared.bus import HandlerContext, Service
from shared.db import DeadLetterRecord, InboxRecord, make_engine
from shared.settings import Settings
from weightflow.client import Client


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


def make_service(failures: dict[int, int]) -> Service:
    svc = Service("pinger")

    @svc.handles(Ping)
    def on_ping(event: Ping, ctx: HandlerContext) -> Sequence[Event]:
        if failures.get(event.n, 0) > 0:
            failures[event.n] -= 1
            raise RuntimeError(f"transient failure for {event.n}")
        ctx.session.add(Effect(n=event.n))
        return [Pong.follow(event, n=event.n)]

    return svc


async def _wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


def test_duplicates_retries_and_poison(settings: Settings, database_url: str) -> None:
    settings = settings.model_copy(update={"max_deliver": 3, "ack_wait_s": 5.0, "database_url": database_url})
    failures = {2: 1}
    svc = make_service(failures)

    async def scenario() -> None:
        app = svc.build(settings)
        await app.start()
        try:
            async with Client(settings) as client:
                pongs: list[Pong] = []
                letters: list[DeadLettered] = []

                async def collect(msg) -> None:  # type: ignore[no-untyped-def]
                    from contracts.base import parse_event

                    event = parse_event(msg.data)
                    if isinstance(event, Pong):
                        pongs.append(event)
                    if isinstance(event, DeadLettered):
                        letters.append(event)

                await client.nc.subscribe("wf.>", cb=collect)
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
                await _wait_for(lambda: {p.n for p in pongs} == {1, 2, 3} and len(letters) == 2)
                await asyncio.sleep(1.0)  # a late duplicate would show up here
                assert sorted(p.n for p in pongs) == [1, 2, 3]
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert failures[2] == 0
    assert svc.engine is not None
    assert svc.engine.dialect.name == database_url.split(":")[0]
    with Session(svc.engine) as session:
        effects = sorted(e.n for e in session.exec(select(Effect)))
        assert effects == [1, 2, 3], "each event has exactly one side effect"
        assert len(session.exec(select(InboxRecord).where(InboxRecord.service == "pinger")).all()) == 3
        letter, future_letter = session.exec(select(DeadLetterRecord).order_by(DeadLetterRecord.id)).all()
        assert "n" in letter.error and "not a number" in letter.payload.decode()
        assert letter.stream_sequence is not None and letter.deliveries == 1
        assert "schema_version 99 is newer than this service understands" in future_letter.error


def slow_service(started: threading.Event, seconds: float, calls: list[int]) -> Service:
    svc = Service("sleeper")

    @svc.handles(Ping)
    def on_ping(event: Ping, ctx: HandlerContext) -> Sequence[Event]:
        calls.append(event.n)
        started.set()
        time.sleep(seconds)
        ctx.session.add(Effect(n=event.n))
        return [Pong.follow(event, n=event.n)]

    return svc


def test_shutdown_finishes_quick_work_and_naks_the_rest(settings: Settings) -> None:
    """SIGTERM's path: work that ends within the grace period is acked; longer work is NAKed at once,
    redelivered to the next instance well before ack_wait, and its side effect still happens once."""
    settings = settings.model_copy(update={"ack_wait_s": 60.0, "shutdown_grace_s": 1.5})
    calls_a: list[int] = []
    calls_b: list[int] = []

    async def scenario() -> float:
        started = threading.Event()
        first = slow_service(started, 0.5, calls_a)
        app = first.build(settings)
        await app.start()
        async with Client(settings) as client:
            await client.publish(Ping(run_id=uuid4(), n=1))  # finishes inside the grace period
            await _wait_for(started.is_set)
            started.clear()
            await app.stop()
            assert calls_a == [1]
            app = slow_service(started, 6.0, calls_a).build(settings)
            await app.start()
            await client.publish(Ping(run_id=uuid4(), n=2))  # outlives the grace period
            await _wait_for(started.is_set)
            stopped_at = time.monotonic()
            await app.stop()
            second = slow_service(threading.Event(), 0.0, calls_b)
            app = second.build(settings)
            await app.start()
            try:
                await _wait_for(lambda: 2 in calls_b, timeout=15)
                redelivered_after = time.monotonic() - stopped_at
                await asyncio.sleep(7.0)  # the abandoned first attempt finishes and meets the inbox row
            finally:
                await app.stop()
            return redelivered_after

    redelivered_after = asyncio.run(scenario())
    assert calls_a == [1, 2] and calls_b == [2], "quick work was not redelivered; slow work was, once"
    assert redelivered_after < settings.ack_wait_s / 2, "NAKed on shutdown, not left to time out"
    engine = make_engine(settings.resolved_database_url())
    with Session(engine) as session:
        assert sorted(e.n for e in session.exec(select(Effect))) == [1, 2]


def test_event_that_is_never_acked_is_dead_lettered_when_jetstream_gives_up(settings: Settings) -> None:
    """A handler that crashes its process every time never reaches the bus's own dead-lettering; the
    max-deliveries advisory, kept in a stream, is turned into a dead letter by the next live replica."""
    settings = settings.model_copy(update={"max_deliver": 2, "ack_wait_s": 1.0})
    svc = make_service({})

    async def scenario() -> int:
        app = svc.build(settings)
        await app.start()  # declares the streams and the durable consumers, as a deployed service would
        await app.stop()
        async with Client(settings) as client:
            poison = Ping(run_id=uuid4(), n=7)
            await client.publish(poison)
            crashing = await client.js.pull_subscribe(Ping.subject(), durable=svc.durable_name(Ping),
                                                      stream=settings.stream)
            for _ in range(settings.max_deliver):  # fetched, then the "process dies" before acking
                (msg,) = await crashing.fetch(1, timeout=10)
                sequence: int = msg.metadata.sequence.stream
                await asyncio.sleep(settings.ack_wait_s + 0.5)
            await crashing.unsubscribe()
            revived = make_service({})
            app = revived.build(settings)
            await app.start()
            try:
                def recorded() -> bool:
                    assert revived.engine is not None
                    with Session(revived.engine) as session:
                        return session.exec(select(DeadLetterRecord)).first() is not None

                await _wait_for(recorded, timeout=20)
            finally:
                await app.stop()
            return sequence

    sequence = asyncio.run(scenario())
    engine = make_engine(settings.resolved_database_url())
    with Session(engine) as session:
        (letter,) = session.exec(select(DeadLetterRecord)).all()
        assert letter.stream_sequence == sequence and letter.deliveries == 2
        assert "no ack after 2 deliveries" in letter.error
        assert session.exec(select(Effect)).first() is None

    from typer.testing import CliRunner

    from weightflow.cli import app as cli

    env = {"WEIGHTFLOW_HOME": str(settings.home), "WEIGHTFLOW_NATS_URL": str(settings.nats_url)}
    listed = CliRunner().invoke(cli, ["dlq", "ls", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    shown = CliRunner().invoke(cli, ["dlq", "show", entry["event_id"][:8]], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(json.loads(shown.output)["payload"])["n"] == 7, "the payload was fetched from the stream"
