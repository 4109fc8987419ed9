"""Run the workflow: the embedded stack or one service, submit or change requirements, resume a halt."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import typer
from rich.markup import escape

from weightflow.cli.common import Refused, console, err, positive, print_event, refusal, request, run, store
from weightflow.client import AWAITING_APPROVAL, Client, RunTracker, failure_reason, track
from weightflow.contracts.base import Event
from weightflow.contracts.registry import DeploymentPromoted, PromotionAwaitingApproval
from weightflow.contracts.requirements_doc import RequirementsError
from weightflow.contracts.topology import SERVICES
from weightflow.contracts.workflow import RequestRefused, ResumeRequested, WorkflowResumed
from weightflow.shared.settings import REFUSED_TO_START_EXIT, Settings
from weightflow.stack import NATS_KEY, Stack
from weightflow.submission import Prepared, prepare

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-tickets" / "requirements.yaml"
T = TypeVar("T")


def service(name: str = typer.Argument(..., help=f"one of {', '.join(SERVICES)}")) -> None:
    """Run one service in the foreground (scale by starting more; they share the work)."""
    if name not in SERVICES:
        err.print(f"[red]error:[/] unknown service {name!r}; choose one of {', '.join(SERVICES)}")
        raise typer.Exit(2)
    logging.basicConfig(level=os.environ.get("WEIGHTFLOW_LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    # one line per HTTP request of a canary or an API benchmark drowns the log; failures are logged by us
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from weightflow.shared.bus.runtime import run_process
    from weightflow.shared.modeling.registry import load_plugins

    try:
        settings = Settings()
        load_plugins(settings.plugins)
    except Exception as exc:  # a setting or plugin it cannot use: one line; `up` does not restart it
        message = refusal(exc)
        if message is None:
            raise
        err.print(f"[red]error:[/] {escape(message)}", highlight=False)
        raise SystemExit(REFUSED_TO_START_EXIT) from None
    run_process(importlib.import_module(f"weightflow.services.{name}.app").service, settings)


def _started(stack: Stack) -> Stack:
    stack.start()
    console.print(f"[bold]weightflow[/] NATS {stack.settings.resolved_nats_url()} · data {stack.home} · "
                  f"{len(stack.procs)} service processes (logs in {stack.home / 'logs'})")
    return stack


def supervise_round(stack: Stack, reported: set[str]) -> None:
    """One round of `up`: restart what crashed and say so; say once what refused to start (not restarted: it would
    only refuse again), and stop, with exit 2, when every service process refused."""
    for key in stack.supervise_once():
        log = stack.nats.log_file if key == NATS_KEY and stack.nats else stack.log_file(key)
        why = f": its store could not be written ({stack.store_error})" if key == NATS_KEY and stack.store_error else ""
        err.print(f"[yellow]restarted {key}[/]{why} (see {log})", highlight=False)
    for key, line in list(stack.refused.items()):
        if key not in reported:
            reported.add(key)
            err.print(f"[red]{key} refused to start[/] (exit {REFUSED_TO_START_EXIT}, not restarted): {escape(line)}",
                      highlight=False)
    if stack.procs and len(stack.refused) == len(stack.procs):
        raise Refused("every service refused to start (above): do what they say, then `weightflow up` again")


def up(replicas: int = typer.Option(1, min=1, help="processes per service (they share each durable consumer)")
       ) -> None:
    """Start the embedded stack: a private nats-server and every service, until Ctrl-C or SIGTERM."""
    stack = Stack(Settings(), replicas=replicas)
    reported: set[str] = set()
    # Handlers from before the first child starts: a signal while the stack starts stops what already runs.
    with stack.until_signalled():
        _started(stack)
        while True:
            supervise_round(stack, reported)
            time.sleep(0.5)


async def _follow(settings: Settings, event: Event, timeout: float, as_json: bool) -> RunTracker:
    async with Client(settings) as client:
        if not as_json:
            console.print(f"submitting run [bold]{event.run_id}[/]; following (Ctrl-C stops following, not the run)")
        return await track(client, event, timeout=timeout, on_event=lambda e: print_event(e, as_json))


def _prepared(path: Path, settings: Settings, changed: bool = False) -> Prepared:
    try:
        prepared = prepare(path, store(settings), changed=changed)
    except RequirementsError as exc:
        err.print(f"[red]{path}: the requirements are not valid:[/]")
        for line in exc.errors:
            err.print(f"  - {line}", markup=False)
        raise typer.Exit(2) from exc
    for warning in prepared.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    return prepared


def _finish(tracker: RunTracker, as_json: bool) -> None:
    waiting = [e for e in tracker.events if isinstance(e, PromotionAwaitingApproval)]
    if tracker.outcome == AWAITING_APPROVAL and waiting:
        w = waiting[-1]
        if not as_json:
            console.print(f"[yellow]awaiting approval[/]: {w.deployment} manifest {w.manifest_id} is registered and "
                          f"waits for `weightflow approve {w.deployment} {w.manifest_id} --reason ...` (or reject)",
                          highlight=False)
        return
    if tracker.outcome != "succeeded":
        reasons = [r for r in map(failure_reason, tracker.events) if r]
        if not as_json:
            err.print(f"[red]run {tracker.outcome}[/]: {reasons[-1] if reasons else 'no end event seen'}",
                      highlight=False)
        raise typer.Exit(1)
    promoted = [e for e in tracker.events if isinstance(e, DeploymentPromoted)]
    if promoted and not as_json:
        console.print(f"[green]done[/]: {promoted[-1].deployment} is live on manifest {promoted[-1].manifest_id}; "
                      f"see `weightflow runbook {promoted[-1].deployment}`")


def submit(
    file: Path = typer.Argument(..., help="requirements YAML"),
    follow: bool = typer.Option(True, help="follow the run to its end"),
    timeout: float = typer.Option(900, callback=positive, help="seconds to follow"),
    as_json: bool = typer.Option(False, "--json", help="one JSON event per line"),
) -> None:
    """Validate a requirements file, publish it, and follow the run until the model is monitored."""
    settings = Settings()
    event = _prepared(file, settings).event
    if not follow:
        async def publish_only() -> None:
            async with Client(settings) as client:
                await client.publish(event)

        run(publish_only())
        console.print(str(event.run_id))
        return
    _finish(run(_follow(settings, event, timeout, as_json)), as_json)


def change(
    file: Path = typer.Argument(..., help="the deployment's new requirements YAML"),
    timeout: float = typer.Option(900, callback=positive, help="seconds to follow"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Change a deployment's requirements: a new version (clearing a halt and its exclusions), rerouted
    through stage 1 again; waits for the outcome."""
    settings = Settings()
    event = _prepared(file, settings, changed=True).event
    _finish(run(_follow(settings, event, timeout, as_json)), as_json)


def resume(deployment: str,
           timeout: float = typer.Option(60, callback=positive, help="seconds to wait for the answer")) -> None:
    """Resume a deployment whose loop-back halted: a fresh reroute budget, and a canary now."""
    tracker = request(Settings(), ResumeRequested(run_id=uuid4(), deployment=deployment),
                      lambda e: isinstance(e, WorkflowResumed | RequestRefused), timeout)
    answer = next((e for e in tracker.events if isinstance(e, WorkflowResumed | RequestRefused)), None)
    if isinstance(answer, WorkflowResumed):
        console.print(f"resumed {deployment} (requirements v{answer.requirements_version}); a canary runs now")
        return
    err.print(f"[red]not resumed:[/] {answer.reason if answer else f'no answer within {timeout:g} s'}",
              highlight=False)
    raise typer.Exit(1)


async def _unless_refused(stack: Stack, work: Coroutine[Any, Any, T], poll_s: float = 0.5) -> T:
    """`work`, given up as soon as a service of the stack refuses to start: the run could never finish, and the
    service's one line says what to do (a database behind the schema: `weightflow db upgrade`)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            if stack.refused:
                key, line = next(iter(stack.refused.items()))
                raise Refused(f"{key} refused to start (exit {REFUSED_TO_START_EXIT}, not restarted): {line}")
            await asyncio.wait({task}, timeout=poll_s)
        return task.result()
    finally:
        task.cancel()


def demo(
    keep: bool = typer.Option(False, help="keep the stack running after the first canary"),
    timeout: float = typer.Option(900, callback=positive, help="seconds before giving up"),
    requirements: Path = typer.Option(EXAMPLE, help="requirements file to run"),
) -> None:
    """Start the embedded stack, run the shipped example to a monitored deployment, then stop."""
    settings = Settings()
    event = _prepared(requirements, settings).event
    stack = Stack(settings)
    with stack.until_signalled():  # Ctrl-C or SIGTERM, from the first child on, stops every one (nats-server too)
        _started(stack)
        with stack.supervising():  # a service or nats-server that fails mid-run is restarted, as by `up`
            tracker = run(_unless_refused(stack, _follow(stack.settings, event, timeout, False)))
        _finish(tracker, False)
        if keep:
            console.print("stack keeps running; Ctrl-C or SIGTERM stops it")
            while True:
                stack.supervise_once()
                time.sleep(0.5)


def register(app: typer.Typer) -> None:
    for command in (up, service, demo, submit, change, resume):
        app.command()(command)
