"""The UI's copy of the event stream: read once from the start, then followed, in one background task.

Pages are built from this list, so a request never waits on NATS; `version` changes whenever an event
arrives, which is what the browser polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from weightflow.client import Client
from weightflow.contracts.base import Event
from weightflow.shared.settings import Settings

log = logging.getLogger("weightflow.ui")
RETRY_S = 3.0


class EventFeed:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: list[Event] = []
        self.error: str | None = None  # why the stream is not being followed right now
        self._seen: set[object] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def version(self) -> str:
        return f"{len(self.events)}:{self.error or ''}"

    def add(self, event: Event) -> None:
        """Take one event (once: a re-follow after a lost connection replays the stream)."""
        if event.event_id in self._seen:
            return
        self._seen.add(event.event_id)
        self.events.append(event)

    async def _follow(self) -> None:
        while True:
            try:
                async with Client(self.settings, read_only=True) as client:
                    self.error = None
                    async for event in client.follow():
                        self.add(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down or restarting: say so on the page, try again
                self.error = f"not following the event stream: {exc}"
                log.warning("%s", self.error)
            await asyncio.sleep(RETRY_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
