"""A service process's life: in-flight work with heartbeats, SIGTERM grace, and test-only crash points."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine, Iterator
from typing import Any

from sqlalchemy.engine import Engine

from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.settings import Settings

log = logging.getLogger("weightflow.bus")
# How long shutdown waits for the background tasks it cancelled (relay, sweeper, periodic jobs, metrics).
TASKS_STOP_S = 5.0


class Lifecycle:
    def __init__(self, name: str, settings: Settings, *, exit_process_on_stop: bool = False) -> None:
        self.name = name
        self.settings = settings
        self.engine: Engine | None = None
        self.store: ArtifactStore | None = None
        self.stopping = False
        self._exit_process_on_stop = exit_process_on_stop
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: dict[int, Any] = {}
        self._released: set[int] = set()
        self._abandoned = False  # a background task outlived its cancellation (see on_shutdown)

    def start_task(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    @contextlib.contextmanager
    def in_flight(self, msg: Any) -> Iterator[None]:
        """Track the message for shutdown and tell JetStream it is being worked on while the block runs."""
        key = id(msg)
        self._inflight[key] = msg
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            yield
        finally:
            heartbeat.cancel()
            self._inflight.pop(key, None)

    def released(self, msg: Any) -> bool:
        """True (once) when shutdown already NAKed this message: it must not be acked now."""
        key = id(msg)
        if key in self._released:
            self._released.discard(key)
            return True
        return False

    async def _heartbeat(self, msg: Any) -> None:
        """Tell JetStream the message is still being worked on, so it is not redelivered to a replica."""
        while True:
            await asyncio.sleep(max(self.settings.ack_wait_s / 3, 0.5))
            try:
                await msg.in_progress()
            except Exception:
                log.warning("%s: in-progress heartbeat failed", self.name)

    async def on_shutdown(self) -> None:
        """SIGTERM: take no new work, give in-flight handlers the grace period, NAK what is still running.

        A NAKed message is redelivered at once to a replica (or to this service when it restarts); if the
        abandoned handler commits after all, the inbox makes the redelivery a no-op.
        """
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        while self._inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for key, msg in list(self._inflight.items()):
            self._released.add(key)
            with contextlib.suppress(Exception):
                await msg.nack()
            log.warning("%s: shutdown grace (%.0f s) over, NAKed in-flight %s for redelivery", self.name,
                        self.settings.shutdown_grace_s, msg.raw_message.subject)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=TASKS_STOP_S)
            if stuck:  # a task that ignores its cancellation must not keep the process from ever ending
                self._abandoned = True
                log.warning("%s: %d background task(s) still running %.0f s after being cancelled (%s); the process "
                            "ends without them", self.name, len(stuck), TASKS_STOP_S,
                            ", ".join(sorted(t.get_coro().__qualname__ for t in stuck)))  # type: ignore[union-attr]
        self._tasks.clear()

    async def after_shutdown(self) -> None:
        if (self._released or self._abandoned) and self._exit_process_on_stop:
            # A handler thread cannot be interrupted and the interpreter would wait for it at exit; its
            # message is already NAKed and its transaction uncommitted, so leaving now loses nothing. Likewise a
            # background task that outlived its cancellation: asyncio.run would wait for it forever.
            logging.shutdown()
            os._exit(0)

    def dump_on_signal(self) -> None:
        """`kill -USR1 <pid>` logs what every asyncio task is waiting on (`kill -USR2`: every thread's stack, which
        works even when the event loop is blocked): a service that stopped taking work without dying says where it
        stopped, with no debugger attached."""
        if hasattr(signal, "SIGUSR1"):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread's loop
                asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.dump_tasks)

    def dump_tasks(self) -> None:
        lines = sorted(f"  {task.get_name()}: {awaiting(task.get_coro())}" for task in asyncio.all_tasks())
        log.warning("%s: task dump (SIGUSR1), %d tasks, each with the awaits it is suspended in:\n%s", self.name,
                    len(lines), "\n".join(lines))

    def crash_point(self, point: str) -> None:
        """Fault injection for the crash-safety tests: SIGKILL this process once at `point`.

        Enabled only by WEIGHTFLOW_CRASH_POINTS (empty in any real deployment); a marker file in the data
        directory makes each point fire once per service, so the restarted process carries on.
        """
        if point not in self.settings.crash_points.split(","):
            return
        marker = self.settings.home / "crash-points" / f"{self.name}.{point}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        log.warning("%s: crash point %s: SIGKILL", self.name, point)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def awaiting(coro: Any) -> str:
    """`outer:line > inner:line > ...`: the chain of awaits a suspended coroutine sits in (one line, unlike a
    traceback per task)."""
    hops: list[str] = []
    while coro is not None and len(hops) < 12:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            hops.append(type(coro).__name__)
            break
        hops.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(hops)
