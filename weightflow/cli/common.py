"""What every command shares: the consoles, running a coroutine, the event stream, printing events.

Nothing here imports torch: only `predict` and `service` load models, and they import them themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from uuid import UUID

import typer
from rich.console import Console

from contracts.base import Event
from shared.artifacts import ArtifactStore
from shared.settings import Settings
from weightflow.client import Client, RunTracker, failure_reason, track
from weightflow.render import summary

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ConnectionError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(3) from exc


def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.resolved_artifacts_dir())


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


def tracked_run(prefix: str) -> tuple[UUID, RunTracker] | None:
    """The run named by `prefix` (default: the latest) followed across its reroutes; None when there is none."""
    events = history(Settings())
    if not events:
        console.print("no runs yet")
        return None
    chosen = match_run(events, prefix) if prefix else events[-1].run_id
    tracker = RunTracker({chosen})
    for e in events:
        tracker.feed(e)
    return chosen, tracker


def match_run(events: list[Event], prefix: str) -> UUID:
    ids = {e.run_id for e in events if str(e.run_id).startswith(prefix)}
    if len(ids) != 1:
        err.print(f"[red]error:[/] {'no' if not ids else 'several'} runs match {prefix!r}; see `weightflow runs`")
        raise typer.Exit(2)
    return ids.pop()
