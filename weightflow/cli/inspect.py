"""Look at what happened, from the event stream: `status`, `runs`, `events`.

Only runs are runs: what requirements started (operator requests, endpoint announcements and rogue payloads
are not). A run that has not ended says why it waits, from what the stream cannot show while nats-server
refuses writes: events still in an outbox, dead letters not yet announced, the store's own error.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import typer

from weightflow.backlog import backlog_of, why_waiting
from weightflow.cli.common import Refused, console, err, history, print_event, report_skipped, run, store
from weightflow.client import Client, RunTracker, describe_state, find_run, run_state, runs_of
from weightflow.contracts.base import Event
from weightflow.contracts.workflow import DeadLettered, WorkflowRerouted
from weightflow.shared.natsd import StoreHealth, store_health
from weightflow.shared.settings import Settings


def _tracked(prefix: str, events: list[Event] | None = None) -> tuple[UUID, RunTracker] | None:
    """The run named by `prefix` (default: the latest run) followed across its reroutes."""
    events = history(Settings()) if events is None else events
    found = find_run(events, prefix)
    if isinstance(found, str):
        if found == "no runs yet":
            console.print(found)
            return None
        err.print(f"[red]error:[/] {found}", highlight=False)
        raise typer.Exit(2)
    tracker = RunTracker({found})
    for e in events:
        tracker.feed(e)
    return found, tracker


def _store(settings: Settings) -> StoreHealth | None:
    url = settings.resolved_nats_monitor_url()
    return store_health(url) if url else None


def status(run_id: str = typer.Argument("", metavar="RUN", help="run id (or a prefix); default: the latest run"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Every event of one run (and the runs it was rerouted into), in order, where it stands and, while it
    has not ended, why it waits."""
    settings = Settings()
    found = _tracked(run_id)
    if found is None:
        return
    chosen, tracker = found
    backlog, _ = backlog_of(settings)
    # Dead letters the database holds that the stream does not have yet end the run all the same.
    held: list[Event] = []
    if backlog is not None:
        seen = {e.event_id for e in tracker.events}
        held = [e for e in backlog.letters if e.run_id in tracker.run_ids and e.event_id not in seen]
        for letter in held:
            tracker.feed(letter)
    held_ids = {e.event_id for e in held}
    waiting = why_waiting(tracker.run_ids, backlog, _store(settings)) if tracker.outcome is None else []
    hops = [e for e in tracker.events if isinstance(e, WorkflowRerouted) and e.run_id in tracker.run_ids]
    outcome = tracker.outcome or "in progress"
    state = f"rerouted → {hops[-1].new_run_id}: {outcome}" if hops else outcome
    if as_json:
        console.print_json(json.dumps({
            "run_id": str(chosen), "outcome": outcome, "rerouted_to": str(hops[-1].new_run_id) if hops else None,
            "waiting": waiting, "events": [json.loads(e.model_dump_json()) for e in tracker.events],
            "not_on_stream": [str(e.event_id) for e in held]}))
        return
    for e in tracker.events:
        print_event(e, False)
        if isinstance(e, DeadLettered) and e.event_id in held_ids:
            console.print("         (in the database; not on the stream yet)", style="dim")
    console.print(f"[bold]run {chosen}: {state}[/]", highlight=False)
    for line in waiting:
        console.print(f"  {line}", style="yellow", markup=False, highlight=False)


def runs(as_json: bool = typer.Option(False, "--json")) -> None:
    """Runs seen on the bus, newest last: each with its own state ("rerouted → RUN" where its work moved on)."""
    rows: list[dict[str, Any]] = []
    for run_id, events in runs_of(history(Settings())).items():
        state = run_state(run_id, events)
        rows.append({"run_id": str(run_id), "started": events[0].occurred_at.isoformat(), "events": len(events),
                     "last": events[-1].type_name(), "outcome": state[0],
                     "rerouted_to": str(state[1]) if state[1] else None, "state": describe_state(state)})
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print("no runs yet")
    for r in rows:
        console.print(f"{r['run_id']}  {r['started'][:19]}  {r['events']:>3} events  {r['last']:<30} {r['state']}",
                      markup=False, highlight=False)


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
           out: Path | None = typer.Option(None, "--out", help="write the Markdown here, not to the terminal"),
           html: Path | None = typer.Option(None, "--html", help="write one self-contained HTML page with plots here "
                                            "(plotly.js embedded: it opens offline)"),
           deployment: str = typer.Option("", "--deployment", help="the page of a deployment's whole history "
                                          "across runs, not of one run (with --html)")) -> None:
    """A report of one run: candidates with their scores and intervals, decisions, memory, tuning, registration,
    canaries and the loop-back. Markdown by default; `--html PATH` writes the page with plots."""
    from weightflow.pages import PageOptions, deployment_scope, render_deployment_page, render_run_page, run_scope
    from weightflow.report import render

    if deployment and html is None:
        raise Refused("--deployment writes an HTML page: add --html PATH")
    settings = Settings()
    options = PageOptions(read_text=lambda digest: store(settings).read_bytes(digest).decode())
    events = history(settings)
    if deployment:
        assert html is not None
        picked = deployment_scope(events, deployment)
        if not picked:
            raise Refused(f"no events of deployment {deployment!r} on the stream; see `weightflow registry ls`")
        _write(html, render_deployment_page(deployment, picked, options))
        return
    found = _tracked(run_id, events)
    if found is None:
        return
    chosen, tracker = found
    if html is not None:
        picked, outcome = run_scope(events, chosen)
        _write(html, render_run_page(chosen, picked, outcome, options))
        if out is None:
            return
    text = render(chosen, tracker.events, tracker.outcome or "in progress", store(settings).read_bytes)
    if out is None:
        console.print(text, markup=False, highlight=False)
        return
    _write(out, text)


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    console.print(f"wrote {path}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    for command in (status, runs, events, report):
        app.command()(command)
