"""Look at what happened, from the event stream alone: `status`, `runs`, `events`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import typer

from shared.settings import Settings
from weightflow.cli.common import console, history, print_event, report_skipped, run, tracked_run
from weightflow.client import Client, RunTracker, runs_of


def status(run_id: str = typer.Argument("", metavar="RUN", help="run id (or a prefix); default: the latest run"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Every event of one run (and the runs it was rerouted into), in order, and where it stands."""
    found = tracked_run(run_id)
    if found is None:
        return
    chosen, tracker = found
    if as_json:
        console.print_json(json.dumps({"run_id": str(chosen), "outcome": tracker.outcome or "in progress",
                                       "events": [json.loads(e.model_dump_json()) for e in tracker.events]}))
        return
    for e in tracker.events:
        print_event(e, False)
    console.print(f"[bold]run {chosen}: {tracker.outcome or 'in progress'}[/]")


def runs(as_json: bool = typer.Option(False, "--json")) -> None:
    """Runs seen on the bus, newest last."""
    rows: list[dict[str, Any]] = []
    for run_id, events in runs_of(history(Settings())).items():
        tracker = RunTracker({run_id})
        for e in events:
            tracker.feed(e)
        rows.append({"run_id": str(run_id), "started": events[0].occurred_at.isoformat(), "events": len(events),
                     "last": events[-1].type_name(), "outcome": tracker.outcome or "in progress"})
    if as_json:
        console.print_json(json.dumps(rows))
        return
    for r in rows:
        console.print(f"{r['run_id']}  {r['started'][:19]}  {r['events']:>3} events  {r['last']:<30} {r['outcome']}")


def events(follow: bool = typer.Option(False, "--follow", "-f"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the event stream (all of it, then live with --follow)."""

    async def go() -> None:
        async with Client(Settings()) as client:
            try:
                if not follow:
                    for e in await client.history():
                        print_event(e, as_json)
                    return
                async for e in client.follow():
                    print_event(e, as_json)
            finally:
                report_skipped(client)

    with contextlib.suppress(KeyboardInterrupt):
        run(go())


def report(run_id: str = typer.Argument("", metavar="RUN", help="run id (or a prefix); default: the latest run"),
           out: Path | None = typer.Option(None, "--out", help="write the Markdown here, not to the terminal")
           ) -> None:
    """A Markdown report of one run: candidates with their scores and intervals, decisions, memory,
    tuning, registration, canaries and the loop-back."""
    from weightflow.report import render

    found = tracked_run(run_id)
    if found is None:
        return
    chosen, tracker = found
    text = render(chosen, tracker.events, tracker.outcome or "in progress")
    if out is None:
        console.print(text, markup=False, highlight=False)
        return
    out.write_text(text)
    console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    for command in (status, runs, events, report):
        app.command()(command)
