"""One service bound to NATS: a thin faststream app around the handlers, and the promises of the design.

At-least-once delivery with effects applied exactly once (inbox + outbox, shared.bus.processing); the
bus counts deliveries itself (consumers never give up) and dead-letters on its own budget, with backoff
long enough for a real outage; in-progress heartbeats during long work; SIGTERM grace; a dead-letter
write that fails NAKs rather than losing the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

from faststream import AckPolicy, FastStream
from faststream.middlewares import BaseMiddleware
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.specification import AsyncAPI
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import ServiceUnavailableError
from opentelemetry.sdk.trace import TracerProvider

from weightflow.contracts.base import SUBJECT_PREFIX, Event
from weightflow.contracts.workflow import RunRecord
from weightflow.shared import metrics
from weightflow.shared.artifacts import open_store
from weightflow.shared.bus import lifecycle
from weightflow.shared.bus.background import Background
from weightflow.shared.bus.dead_letters import write_dead_letter
from weightflow.shared.bus.decoding import bounded_decoder
from weightflow.shared.bus.delivery import DeadLetter, Done, HandBack, Message, Retry, Verdict, deliver
from weightflow.shared.bus.errors import UndecodableMessage
from weightflow.shared.bus.outbox import waiting
from weightflow.shared.bus.processing import handle_once
from weightflow.shared.bus.runs import NatsRuns
from weightflow.shared.bus.service import Delivery, HandlerContext, HandlerSpec, Service
from weightflow.shared.bus.stalls import StallWatch
from weightflow.shared.bus.streams import ensure_streams
from weightflow.shared.bus.sweeper import Sweeper
from weightflow.shared.db import SchemaMismatchError, create_tables, make_engine
from weightflow.shared.ops_server import OpsServer
from weightflow.shared.settings import REFUSED_TO_START_EXIT, Settings, split_urls
from weightflow.shared.telemetry import current_trace_id, setup_tracing

log = logging.getLogger("weightflow.bus")
STARTUP_PATIENCE_S = 120.0


class ServiceRuntime(lifecycle.Lifecycle, Background):
    def __init__(self, service: Service, settings: Settings, *, exit_process_on_stop: bool = False) -> None:
        super().__init__(service.name, settings, exit_process_on_stop=exit_process_on_stop)
        self.service = service
        self.broker: NatsBroker | None = None
        self.runs: NatsRuns | None = None
        self.ops: OpsServer | None = None
        self._provider: TracerProvider | None = None
        self._bound = False  # every consumer subscribed
        self._loop_tick = time.monotonic()  # the event loop's last sign of life, for /healthz
        self.stalls = StallWatch(settings.consumer_stall_s)
        self.subscribers: dict[str, Any] = {}  # durable consumer name -> its faststream subscriber
        self._in_hand: dict[str, int] = {}  # durable consumer name -> its messages this process is handling

    # -- wiring ------------------------------------------------------------------------------
    def build(self, url: str | None = None) -> FastStream:
        service, settings = self.service, self.settings
        service.check_complete()
        provider = self._provider = self._provider or setup_tracing(service.name, settings)  # once per process
        # Every server of a cluster: the client starts on one that answers and reconnects to a survivor forever.
        broker = NatsBroker(
            split_urls(url) if url else settings.resolved_nats_servers(), name=f"weightflow-{service.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=1, graceful_timeout=1.0, drain_timeout=5, inbox_prefix=service.inbox_prefix(),
            middlewares=[NatsTelemetryMiddleware(tracer_provider=provider), self._dead_letter_middleware()])
        self.broker = broker
        # Declared by _declare_streams, not by faststream: faststream "updates" a stream whose config differs to its
        # own, so one process started without WEIGHTFLOW_STREAM_REPLICAS would shrink a cluster's replicas to 1.
        stream = JStream(name=settings.stream, subjects=[f"{SUBJECT_PREFIX}.>"],
                         duplicate_window=settings.duplicate_window_s, declare=False)
        for spec in service.handlers:
            subscriber = broker.subscriber(
                spec.event_type.subject(), stream=stream, durable=service.durable_name(spec.event_type),
                pull_sub=PullSub(batch_size=1, timeout=1.0),
                # JetStream never gives up (max_deliver -1): the bus counts deliveries and dead-letters itself.
                config=ConsumerConfig(ack_wait=settings.ack_wait_s, max_deliver=-1),
                ack_policy=AckPolicy.MANUAL, decoder=bounded_decoder(spec.event_type),
                inbox_prefix=f"{service.inbox_prefix()}.".encode(),
                title=f"{service.name}:{spec.event_type.type_name()}",
                description=" ".join((spec.fn.__doc__ or "").split()))
            subscriber(self._callback(spec))
            self.subscribers[service.durable_name(spec.event_type)] = subscriber
        for event_type in service.publishes:
            broker.publisher(event_type.subject(), schema=event_type, title=f"{service.name}>{event_type.type_name()}",
                             description=" ".join((event_type.__doc__ or "").split()))
        return FastStream(broker, on_startup=[self._on_startup, self._declare_streams],
                          after_startup=[self._after_startup],
                          on_shutdown=[self.on_shutdown], after_shutdown=[self._after_shutdown],
                          specification=AsyncAPI(title=f"weightflow {service.name}", version="2"))

    def run(self) -> None:
        """Serve until stopped. A database this release cannot use (behind its schema revision) ends the process
        before it touches NATS, with the one line that says what to run and exit code `REFUSED_TO_START_EXIT`: no
        traceback to read, and no restart by a supervisor (it would only refuse again)."""
        if self._exit_process_on_stop and hasattr(signal, "SIGUSR2"):  # threads' stacks (Lifecycle.dump_on_signal)
            faulthandler.register(signal.SIGUSR2, all_threads=True)
            # SIGUSR1's default ends the process: until the loop's task dump takes it over, it only says so
            signal.signal(signal.SIGUSR1, lambda *_: log.warning("%s: still starting, no task dump yet", self.name))
        self.engine = make_engine(self.settings.resolved_database_url())
        try:
            create_tables(self.engine)
        except SchemaMismatchError as exc:
            if not self._exit_process_on_stop:
                raise
            log.error("%s", exc)
            raise SystemExit(REFUSED_TO_START_EXIT) from None
        # JetStream may not answer in time while a cluster forms or elects leaders (seconds, more on a loaded
        # machine): a start that times out before the consumers are bound is tried again, not a crash.
        deadline = time.monotonic() + STARTUP_PATIENCE_S
        while True:
            try:
                asyncio.run(self.build().run())
                return
            except (NatsTimeout, NoRespondersError, ServiceUnavailableError) as exc:
                if self._bound or time.monotonic() > deadline:
                    raise
                log.warning("%s: JetStream did not answer while starting (%s: a cluster electing leaders?); "
                            "starting again", self.service.name, type(exc).__name__)
                time.sleep(2.0)

    def _callback(self, spec: HandlerSpec[Any]) -> Callable[..., Any]:
        async def on_message(event: Event, msg: NatsMessage) -> None:
            await self.handle(spec, event, msg)

        # Built in a factory under `from __future__ import annotations`: name the types for faststream.
        on_message.__annotations__ = {"event": spec.event_type, "msg": NatsMessage, "return": None}
        on_message.__name__ = f"{self.service.name}_{spec.event_type.STAGE}_{spec.event_type.NAME}"
        on_message.__doc__ = spec.fn.__doc__
        return on_message

    def _dead_letter_middleware(self) -> type[BaseMiddleware]:
        runtime = self

        class DeadLetterUndecodable(BaseMiddleware):
            """A payload the bounded decoder refused is dead-lettered on its first delivery."""

            async def consume_scope(self, call_next: Any, msg: Any) -> Any:
                try:
                    return await call_next(msg)
                except UndecodableMessage as exc:
                    await runtime.dead_letter(msg, exc.reason, str(exc))
                    return None

        return DeadLetterUndecodable

    async def _on_startup(self) -> None:
        if self.engine is None:  # built without run(): a test's app
            self.engine = make_engine(self.settings.resolved_database_url())
            await asyncio.to_thread(create_tables, self.engine)
        self.store = open_store(self.settings, self.service.inbox_prefix())

    async def _declare_streams(self) -> None:
        """Create the streams before the consumers bind (one config for every process: `ensure_streams`); left to
        the operator where NATS permissions forbid it (`declare_stream` false)."""
        assert self.broker is not None
        js = (await self.broker.connect()).jetstream()
        # The run registry before any consumer is bound: a subscriber delivers as soon as the broker starts, before
        # after_startup, and a handler that needs the run found none (`assert self.runs`) and failed its first try.
        self.runs = NatsRuns(js, self.settings)
        if self.settings.declare_stream:
            await ensure_streams(js, self.settings)

    async def _after_startup(self) -> None:
        assert self.broker is not None and self.engine is not None
        js = self.broker.connection.jetstream()
        self.runs = self.runs or NatsRuns(js, self.settings)
        self.start_task(self.relay_loop())
        for interval, fn in self.service.periodics:
            self.start_task(self.periodic_loop(interval, fn))
        sweeper = Sweeper(self.service, self.settings, self.engine, js, self.dead_letter_raw)
        self.start_task(sweeper.loop())
        self._bound = True
        self.dump_on_signal()
        self.start_task(self.tick_loop())
        self.start_task(self.observe_loop())
        if self.settings.ops_port is not None:
            self.ops = OpsServer(self.service.name, self.settings.ops_host, self.settings.ops_port,
                                 live={"event_loop": self._loop_alive}, ready=self.readiness_checks()).start()
            if self.settings.ops_port == 0:  # a port nobody chose: say where it is (a chosen one is configured)
                self.ops.announce(self.settings.home, {"service": self.service.name, "kind": "service"})
            log.info("service %s: /metrics, /healthz, /readyz on %s:%d", self.service.name, self.ops.host,
                     self.ops.port)
        log.info("service %s consuming %s", self.service.name, [s.event_type.subject() for s in self.service.handlers])

    async def _after_shutdown(self) -> None:
        if self.ops is not None:
            self.ops.stop()  # also withdraws the announced target: Prometheus stops scraping a process that left
            self.ops = None
        await self.after_shutdown()

    # -- one message -------------------------------------------------------------------------
    async def handle(self, spec: HandlerSpec[Any], event: Event, msg: NatsMessage) -> None:
        started = time.perf_counter()
        name = spec.event_type.type_name()
        durable = self.service.durable_name(spec.event_type)
        self.stalls.delivered(durable)
        meta = msg.raw_message.metadata
        delivery = Delivery(msg.raw_message.subject, meta.sequence.stream if meta.sequence else None,
                            meta.num_delivered or 1)
        if delivery.deliveries > 1:
            metrics.REDELIVERIES.labels(self.service.name, name).inc()
        self._in_hand[durable] = self._in_hand.get(durable, 0) + 1
        try:
            outcome = await self._settle(await deliver(self, Message(spec, event, delivery, msg)), msg)
        finally:
            self._in_hand[durable] -= 1
        metrics.EVENTS_CONSUMED.labels(self.service.name, name, outcome).inc()
        metrics.HANDLER_SECONDS.labels(self.service.name, name).observe(time.perf_counter() - started)

    async def _settle(self, verdict: Verdict, msg: NatsMessage) -> str:
        """Carry out the pipeline's verdict on the NATS message; returns its outcome for the metrics."""
        match verdict:
            case HandBack():
                await msg.nack(delay=1.0)
                return "handed_back"
            case Retry(delay_s=delay):
                await msg.nack(delay=delay)
                return "retried"
            case DeadLetter(reason=reason, error=error):
                with self.in_flight(msg):  # still ours while the record is written (a slow disk or a locked database)
                    return await self.dead_letter(msg, reason, error)
            case Done(handled=handled):
                if self.released(msg):  # NAKed at shutdown; its redelivery will find the inbox row
                    return "handed_back"
                self.crash_point("after_commit")
                await self.publish_outbox()
                await msg.ack()
                return "handled" if handled else "duplicate"
        raise AssertionError(verdict)

    # -- what the pipeline borrows (shared.bus.delivery.Runner) ----------------------------------
    @contextlib.asynccontextmanager
    async def working_on(self, message: Message) -> AsyncIterator[None]:
        with self.in_flight(message.raw):
            yield

    async def run_record(self, run_id: UUID) -> RunRecord | None:
        assert self.runs is not None
        return await self.runs.fetch(run_id)

    async def process(self, message: Message) -> bool:
        assert self.engine is not None and self.store is not None
        ctx = HandlerContext(self.service.name, self.store, self.settings, self.engine, message.delivery)
        return await asyncio.to_thread(handle_once, ctx, message.spec, message.event, self.crash_point)

    # -- dead letters ------------------------------------------------------------------------
    async def dead_letter(self, msg: NatsMessage, reason: str, error: str) -> str:
        """Record and terminate; the outcome for the metrics (`retried` when the record could not be written)."""
        meta = msg.raw_message.metadata
        written = await self.dead_letter_raw(msg.raw_message.subject, msg.body, reason, error,
                                             meta.sequence.stream if meta.sequence else None,
                                             meta.num_delivered or 1)
        if written:
            await msg.reject()  # TERM: recorded, never redelivered
            return "dead_lettered"
        # could not record it (a full disk, a locked database): keep the message and try again later
        await msg.nack(delay=self.settings.retry_backoff_cap_s)
        return "retried"

    async def dead_letter_raw(self, subject: str, raw: bytes, reason: str, error: str, sequence: int | None,
                              deliveries: int, *, event_id: str | None = None, run_id: str | None = None) -> bool:
        assert self.engine is not None and self.store is not None
        try:
            await asyncio.to_thread(write_dead_letter, self.engine, self.store, self.service.name, subject=subject,
                                    raw=raw, reason=reason, error=error, stream_sequence=sequence,
                                    deliveries=deliveries, trace_id=current_trace_id(), event_id=event_id,
                                    run_id=run_id)
        except Exception:
            log.exception("%s: could not record the dead letter of %s (%s); NAKed to try again", self.service.name,
                          subject, reason)
            return False
        log.error("%s dead-lettered %s (%s): %s", self.service.name, subject, reason, error[:300])
        metrics.DEAD_LETTERS.labels(self.service.name, reason).inc()
        await self.publish_outbox()
        return True

    # -- what operators watch ----------------------------------------------------------------
    def observe_published(self, subject: str, payload: bytes) -> None:
        metrics.observe_published(self.service.name, subject, payload)

    def _loop_alive(self) -> tuple[bool, str]:
        """The event loop ticks every second; a loop stuck for half an ack_wait cannot ack or heartbeat."""
        silent = time.monotonic() - self._loop_tick
        limit = max(10.0, self.settings.ack_wait_s / 2)
        return silent < limit, f"last tick {silent:.1f} s ago (limit {limit:.0f} s)"

    def readiness_checks(self) -> dict[str, Callable[[], tuple[bool, str]]]:
        def nats() -> tuple[bool, str]:
            connected = self.broker is not None and self.broker.connection.is_connected
            return connected, "connected" if connected else "not connected (reconnecting)"

        def database() -> tuple[bool, str]:
            assert self.engine is not None
            from sqlalchemy import text

            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True, self.engine.url.render_as_string(hide_password=True)

        def consumers() -> tuple[bool, str]:
            return self._bound, f"{len(self.service.handlers)} bound" if self._bound else "not yet bound"

        def draining() -> tuple[bool, str]:
            return not self.stopping, "shutting down: taking no new work" if self.stopping else "taking work"

        return {"nats": nats, "database": database, "consumers": consumers, "not_draining": draining}

    async def tick_loop(self) -> None:
        """The loop's heartbeat for /healthz: a task of its own, so slow metric reads never look like a hang."""
        while True:
            self._loop_tick = time.monotonic()
            await asyncio.sleep(1.0)

    async def observe_loop(self) -> None:
        """Keep the gauges a scrape reads current: readiness, consumer lag, outbox depth."""
        while True:
            try:
                await self._observe_once()
            except Exception as exc:  # NATS away, database locked: the gauges keep their last values
                log.debug("%s: metrics refresh failed: %s", self.service.name, exc)
            await asyncio.sleep(self.settings.metrics_interval_s)

    async def _observe_once(self) -> None:
        assert self.broker is not None and self.engine is not None
        name = self.service.name
        ready = self.broker.connection.is_connected and self._bound and not self.stopping
        metrics.SERVICE_READY.labels(name).set(1 if ready else 0)
        count, age = await asyncio.to_thread(waiting, self.engine, name)
        metrics.OUTBOX_UNPUBLISHED.labels(name).set(count)
        metrics.OUTBOX_OLDEST_AGE.labels(name).set(age)
        js = self.broker.connection.jetstream()
        for spec in self.service.handlers:
            durable = self.service.durable_name(spec.event_type)
            info = await js.consumer_info(self.settings.stream, durable, timeout=2.0)
            event = spec.event_type.type_name()
            metrics.CONSUMER_PENDING.labels(name, event).set(info.num_pending or 0)
            metrics.CONSUMER_ACK_PENDING.labels(name, event).set(info.num_ack_pending or 0)
            stalled = self.stalls.observe(durable, pending=info.num_pending or 0,
                                          ack_pending=info.num_ack_pending or 0, waiting=info.num_waiting or 0,
                                          in_hand=self._in_hand.get(durable, 0))
            if stalled and not self.stopping:
                await self.rebind(durable, event, info)

    async def rebind(self, durable: str, event: str, info: Any) -> None:
        """Bind a stalled consumer again (shared.bus.stalls): its pull loop and subscription start over on the
        same durable consumer, which keeps its position. What every task waited on is logged first: the stall's
        cause, for whoever reads the log."""
        log.warning("%s: consumer %s has %d message(s) waiting (%d to be delivered again, %d pull requests) and "
                    "none delivered for %.0f s: binding it again", self.service.name, durable,
                    info.num_pending or 0, info.num_ack_pending or 0, info.num_waiting or 0, self.stalls.stall_s)
        self.dump_tasks()
        subscriber = self.subscribers[durable]
        try:
            await subscriber.stop()
        except Exception as exc:  # its tasks are cancelled by now; a subscription it could not close is dropped
            log.warning("%s: unbinding consumer %s: %s: %s", self.service.name, durable, type(exc).__name__, exc)
            subscriber.subscription = None
        try:
            await subscriber.start()
        except Exception:
            log.exception("%s: binding consumer %s again failed; the next look tries again", self.service.name,
                          durable)
            return
        metrics.CONSUMER_REBINDS.labels(self.service.name, event).inc()


def build_app(service: Service, settings: Settings | None = None, *, url: str | None = None) -> FastStream:
    """The faststream app of `service` (a test's, the AsyncAPI document's, or a process's)."""
    return ServiceRuntime(service, settings or Settings()).build(url=url)


def run_process(service: Service, settings: Settings | None = None) -> None:
    """Run `service` as this OS process's only job until SIGTERM/SIGINT (what `weightflow service NAME` does)."""
    ServiceRuntime(service, settings or Settings(), exit_process_on_stop=True).run()
