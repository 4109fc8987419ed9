"""What every command shares: the consoles, running a coroutine, the event stream, printing events.

Nothing here imports torch: only `predict` and `service` load models, and they import them themselves.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from weightflow.client import Client, RunTracker, failure_reason, track
from weightflow.contracts.base import Event
from weightflow.render import summary
from weightflow.shared.artifacts import ArtifactStore, IntegrityError, UnsafeArtifactError, open_store
from weightflow.shared.bus.streams import StreamSetupError
from weightflow.shared.db import SchemaMismatchError
from weightflow.shared.modeling.checkpoint import CheckpointError
from weightflow.shared.modeling.registry import PluginError
from weightflow.shared.safe_paths import UnsafePathError
from weightflow.shared.settings import Settings
from weightflow.shared.telemetry import TelemetryConfigError

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


class Refused(Exception):
    """What the user asked for cannot be done as given; the message says what to change (exit 2)."""


# Exceptions whose message is written for the user and names what to fix: the user's input is refused.
REFUSALS: tuple[type[Exception], ...] = (Refused, UnsafePathError, UnsafeArtifactError, CheckpointError,
                                         IntegrityError, TelemetryConfigError, StreamSetupError,
                                         SchemaMismatchError,  # says to run `weightflow db upgrade`
                                         PluginError)
# An OSError with one of these about a named path is a path the user gave (or a setting) that cannot be used;
# others (a full disk, an I/O error) are faults of the machine and keep their traceback.
PATH_ERRNOS = {errno.ENOENT: "no such file or folder", errno.ENOTDIR: "a part of the path is a file, not a folder",
               errno.EISDIR: "is a folder; name a file", errno.EACCES: "permission denied",
               errno.EPERM: "not permitted", errno.ELOOP: "too many levels of symlinks",
               errno.ENAMETOOLONG: "the name is too long", errno.EROFS: "on a read-only file system",
               errno.EEXIST: "already exists", errno.ENXIO: "not a file (a socket or a FIFO with no writer?)"}


def refusal(exc: BaseException) -> str | None:
    """The one line that tells the user what to fix when `exc` refuses their input; None for a fault of ours.

    `main` asks this of anything a command raises, so a command need not catch what it cannot fix itself."""
    if isinstance(exc, REFUSALS):
        return str(exc)
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:  # a WEIGHTFLOW_* variable
        return "; ".join(f"WEIGHTFLOW_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
                         for e in exc.errors())
    if isinstance(exc, OSError) and exc.errno in PATH_ERRNOS and exc.filename:
        path = os.fsdecode(exc.filename)
        home = os.path.abspath(os.environ.get("WEIGHTFLOW_HOME") or Settings.model_fields["home"].default)
        hint = f" (the data folder is WEIGHTFLOW_HOME={home})" if path.startswith(home + os.sep) else ""
        return f"{path}: {PATH_ERRNOS[exc.errno]}{hint}"
    return None


def positive(value: float | None) -> float | None:
    """Typer callback for a number of seconds: above 0 and finite (a wait of 0 or less gives up before asking)."""
    if value is not None and not 0 < value < math.inf:
        raise typer.BadParameter("must be a number of seconds above 0")
    return value


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ConnectionError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(3) from exc


def store(settings: Settings) -> ArtifactStore:
    return open_store(settings)


def print_event(e: Event, as_json: bool) -> None:
    if as_json:
        console.print_json(e.model_dump_json())
        return
    stamp = e.occurred_at.astimezone().strftime("%H:%M:%S")
    style = "red" if failure_reason(e) else "green" if "passed" in e.type_name() else ""
    console.print(f"[dim]{stamp} {str(e.run_id)[:8]}[/] [bold]{e.type_name():<32}[/] ", end="")
    console.print(summary(e), style=style, markup=False, highlight=False)


def report_skipped(client: Client) -> None:
    """Messages on the stream that are not readable events are skipped, and said so (never a crash)."""
    if client.skipped:
        sequences = ", ".join(str(seq) for seq, _ in client.skipped[:10])
        err.print(f"[yellow]skipped {len(client.skipped)} unreadable message(s) on the stream[/] (sequence "
                  f"{sequences}{', …' if len(client.skipped) > 10 else ''}): {client.skipped[0][1]}", markup=True)


def history(settings: Settings) -> list[Event]:
    async def go() -> list[Event]:
        async with Client(settings) as client:
            events = await client.history()
        report_skipped(client)
        return events

    return run(go())


def request(settings: Settings, event: Event, done: Callable[[Event], bool], timeout: float) -> RunTracker:
    """Publish an operator's request and wait for its answer (the request is its own run)."""

    async def go() -> RunTracker:
        async with Client(settings) as client:
            return await track(client, event, timeout=timeout, done=done)

    return run(go())
