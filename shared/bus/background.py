"""What a service runs beside its handlers: the outbox relay and its periodic jobs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from faststream.nats import NatsBroker
from sqlalchemy.engine import Engine
from sqlmodel import Session

from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.bus import outbox
from weightflow.shared.bus.processing import stage_outbox
from weightflow.shared.bus.service import HandlerContext, Service
from weightflow.shared.bus.streams import stream_for
from weightflow.shared.settings import Settings

log = logging.getLogger("weightflow.bus")


class Background:
    service: Service
    settings: Settings
    broker: NatsBroker | None
    engine: Engine | None
    store: ArtifactStore | None
    _relay_lock: asyncio.Lock | None = None

    def observe_published(self, subject: str, payload: bytes) -> None:
        """Called once an event is on the stream (the runtime counts it for its metrics)."""

    async def publish_outbox(self) -> None:
        """Publish this service's committed events in order (one relay at a time per process)."""
        assert self.engine is not None and self.broker is not None
        broker = self.broker
        if self._relay_lock is None:
            self._relay_lock = asyncio.Lock()

        async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
            ack = await broker.publish(payload, subject, headers=headers, stream=stream_for(subject, self.settings),
                                       timeout=2.0)
            if not getattr(ack, "duplicate", False):  # a relay's retry of a row JetStream already has: not new
                self.observe_published(subject, payload)

        async with self._relay_lock:
            await outbox.relay(self.engine, self.service.name, publish, asyncio.to_thread)

    async def relay_loop(self) -> None:
        """Publishes what a crash between commit and publish left behind (and anything deferred)."""
        while True:
            try:
                await self.publish_outbox()
            except Exception:
                log.exception("%s: outbox relay error", self.service.name)
            await asyncio.sleep(1.0)

    async def periodic_loop(self, interval: Callable[[Settings], float], fn: Any) -> None:
        while True:
            await asyncio.sleep(interval(self.settings))
            try:
                await asyncio.to_thread(self._run_periodic, fn)
                await self.publish_outbox()
            except Exception:
                log.exception("%s: periodic job %s failed", self.service.name, fn.__name__)

    def _run_periodic(self, fn: Any) -> None:
        assert self.engine is not None and self.store is not None
        result = fn(HandlerContext(self.service.name, self.store, self.settings, self.engine))
        if result is None:
            return
        with Session(self.engine, expire_on_commit=False) as session:
            stage_outbox(session, self.service.name, result(session))
            session.commit()
