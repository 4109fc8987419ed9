"""The `weightflow` command: run the stack or one service, submit work, and look at what happened."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import logging
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import typer
from rich.console import Console

from contracts.base import Event
from contracts.monitoring import CanaryFailed, CanaryPassed, CanaryRequested
from contracts.registry import DeploymentPromoted, ModelRegistered, RollbackRequested
from contracts.workflow import DeadLettered
from services.requirements.domain import RequirementsError
from shared.artifacts import ArtifactStore, IntegrityError
from shared.settings import Settings
from weightflow.client import Client, RunTracker, failure_reason, runs_of, track
from weightflow.render import summary
from weightflow.stack import SERVICES, Stack
from weightflow.submission import prepare

app = typer.Typer(help="weightflow: select, fit, tune, register and watch a model as an event-driven workflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
registry_app = typer.Typer(help="Registered manifests.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: messages a service could not handle.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")
app.add_typer(dlq_app, name="dlq")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "support-tickets" / "requirements.yaml"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ConnectionError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(3) from exc


def _store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.resolved_artifacts_dir())


def _print_event(e: Event, as_json: bool) -> None:
    if as_json:
        console.print_json(e.model_dump_json())
        return
    stamp = e.occurred_at.astimezone().strftime("%H:%M:%S")
    style = "red" if failure_reason(e) else "green" if "passed" in e.type_name() else ""
    console.print(f"[dim]{stamp} {str(e.run_id)[:8]}[/] [bold]{e.type_name():<32}[/] ", end="")
    console.print(summary(e), style=style, markup=False, highlight=False)


@app.command()
def service(name: str = typer.Argument(..., help=f"one of {', '.join(SERVICES)}")) -> None:
    """Run one service in the foreground (scale by starting more; they share the work)."""
    if name not in SERVICES:
        err.print(f"[red]error:[/] unknown service {name!r}; choose one of {', '.join(SERVICES)}")
        raise typer.Exit(2)
    logging.basicConfig(level=os.environ.get("WEIGHTFLOW_LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(f"services.{name}.app")
    module.service.run_process(Settings())


def _start_stack(settings: Settings, replicas: int = 1) -> Stack:
    stack = Stack(settings, replicas=replicas).start()
    console.print(f"[bold]weightflow[/] NATS {stack.settings.resolved_nats_url()} · data {stack.home} · "
                  f"{len(stack.procs)} service processes (logs in {stack.home / 'logs'})")
    return stack


@app.command()
def up(replicas: int = typer.Option(1, help="processes per service (they share each durable consumer)")) -> None:
    """Start the embedded stack: a private nats-server and every service, until Ctrl-C."""
    stack = _start_stack(Settings(), replicas)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            for key in stack.supervise_once():
                err.print(f"[yellow]restarted {key}[/] (see {stack.home / 'logs' / (key + '.log')})")
            time.sleep(0.5)
    finally:
        console.print("stopping…")
        stack.stop()


async def _submit_and_follow(settings: Settings, event: Event, timeout: float, as_json: bool) -> RunTracker:
    async with Client(settings) as client:
        if not as_json:
            console.print(f"submitting run [bold]{event.run_id}[/]; following (Ctrl-C stops following, not the run)")
        return await track(client, event, timeout=timeout, on_event=lambda e: _print_event(e, as_json))


def _submission(path: Path, settings: Settings, changed: bool = False) -> Event:
    try:
        return prepare(path, _store(settings), changed=changed)
    except RequirementsError as exc:
        err.print(f"[red]{path}: the requirements are not valid:[/]")
        for line in exc.errors:
            err.print(f"  - {line}", markup=False)
        raise typer.Exit(2) from exc


def _finish(tracker: RunTracker, as_json: bool) -> None:
    if tracker.outcome != "succeeded":
        reasons = [r for r in map(failure_reason, tracker.events) if r]
        if not as_json:
            err.print(f"[red]run {tracker.outcome}[/]: {reasons[-1] if reasons else 'no end event seen'}")
        raise typer.Exit(1)
    promoted = [e for e in tracker.events if isinstance(e, DeploymentPromoted)]
    if promoted and not as_json:
        console.print(f"[green]done[/]: {promoted[-1].deployment} is live on manifest {promoted[-1].manifest_id}; "
                      f"see `weightflow runbook {promoted[-1].deployment}`")


@app.command()
def submit(
    file: Path = typer.Argument(..., help="requirements YAML"),
    follow: bool = typer.Option(True, help="follow the run to its end"),
    timeout: float = typer.Option(900, help="seconds to follow"),
    as_json: bool = typer.Option(False, "--json", help="one JSON event per line"),
) -> None:
    """Validate a requirements file, publish it, and follow the run until the model is monitored."""
    settings = Settings()
    event = _submission(file, settings)
    if not follow:
        async def publish_only() -> None:
            async with Client(settings) as client:
                await client.publish(event)

        _run(publish_only())
        console.print(str(event.run_id))
        return
    _finish(_run(_submit_and_follow(settings, event, timeout, as_json)), as_json)


@app.command()
def change(
    file: Path = typer.Argument(..., help="the deployment's new requirements YAML"),
    timeout: float = typer.Option(900, help="seconds to follow"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Change a live deployment's requirements: the workflow is rerouted through stage 1 again."""
    settings = Settings()
    event = _submission(file, settings, changed=True)
    _finish(_run(_submit_and_follow(settings, event, timeout, as_json)), as_json)


@app.command()
def demo(
    keep: bool = typer.Option(False, help="keep the stack running after the first canary"),
    timeout: float = typer.Option(900, help="seconds before giving up"),
    requirements: Path = typer.Option(EXAMPLE, help="requirements file to run"),
) -> None:
    """Start the embedded stack, run the shipped example to a monitored deployment, then stop."""
    settings = Settings()
    event = _submission(requirements, settings)
    stack = _start_stack(settings)
    try:
        tracker = _run(_submit_and_follow(stack.settings, event, timeout, False))
        _finish(tracker, False)
        if keep:
            console.print("stack keeps running; Ctrl-C stops it")
            while True:
                stack.supervise_once()
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


async def _history(settings: Settings) -> list[Event]:
    async with Client(settings) as client:
        return await client.history()


def _match_run(events: list[Event], prefix: str) -> UUID:
    ids = {e.run_id for e in events if str(e.run_id).startswith(prefix)}
    if len(ids) != 1:
        err.print(f"[red]error:[/] {'no' if not ids else 'several'} runs match {prefix!r}; see `weightflow runs`")
        raise typer.Exit(2)
    return ids.pop()


@app.command()
def status(run: str = typer.Argument("", help="run id (or a prefix); default: the latest run"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Every event of one run, in order, and where it stands."""
    events = _run(_history(Settings()))
    if not events:
        console.print("no runs yet")
        return
    run_id = _match_run(events, run) if run else events[-1].run_id
    tracker = RunTracker({run_id})
    for e in events:
        tracker.feed(e)
    if as_json:
        console.print_json(json.dumps({"run_id": str(run_id), "outcome": tracker.outcome or "in progress",
                                       "events": [json.loads(e.model_dump_json()) for e in tracker.events]}))
        return
    for e in tracker.events:
        _print_event(e, False)
    console.print(f"[bold]run {run_id}: {tracker.outcome or 'in progress'}[/]")


@app.command()
def runs(as_json: bool = typer.Option(False, "--json")) -> None:
    """Runs seen on the bus, newest last."""
    grouped = runs_of(_run(_history(Settings())))
    rows: list[dict[str, Any]] = []
    for run_id, events in grouped.items():
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


@app.command()
def events(follow: bool = typer.Option(False, "--follow", "-f"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the event stream (all of it, then live with --follow)."""
    async def go() -> None:
        async with Client(Settings()) as client:
            if not follow:
                for e in await client.history():
                    _print_event(e, as_json)
                return
            async for e in client.follow():
                _print_event(e, as_json)

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


def _registered(settings: Settings) -> list[ModelRegistered]:
    return [e for e in _run(_history(settings)) if isinstance(e, ModelRegistered)]


def _live(settings: Settings, deployment: str) -> str:
    promoted = [e for e in _run(_history(settings)) if isinstance(e, DeploymentPromoted) and e.deployment == deployment]
    if not promoted:
        err.print(f"[red]error:[/] deployment {deployment!r} has no promoted manifest; see `weightflow registry ls`")
        raise typer.Exit(2)
    return promoted[-1].manifest_id


@registry_app.command("ls")
def registry_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered manifests, oldest first."""
    rows = [{"manifest_id": e.manifest_id, "deployment": e.deployment, "run_id": str(e.run_id),
             "registered": e.occurred_at.isoformat()} for e in _registered(Settings())]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    for r in rows:
        console.print(f"{r['manifest_id']}  {r['deployment']:<20} {r['registered'][:19]}  run {r['run_id'][:8]}")


@registry_app.command("show")
def registry_show(manifest_id: str) -> None:
    """The manifest JSON: every pinned checksum, the quantization, the adapter and its data."""
    try:
        console.print_json(_store(Settings()).read_bytes(manifest_id).decode())
    except (ValueError, FileNotFoundError, IntegrityError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@registry_app.command("verify")
def registry_verify(manifest_id: str) -> None:
    """Recompute the sha256 of every file the manifest pins; exit 1 on any mismatch."""
    from shared.serving import read_manifest

    store = _store(Settings())
    try:
        manifest = read_manifest(store, manifest_id)
    except (ValueError, FileNotFoundError, IntegrityError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    bad = 0
    for role, digest in sorted(manifest.checksums().items()):
        try:
            store.verify(digest)
            console.print(f"[green]ok[/]   {role:<40} {digest}")
        except (IntegrityError, FileNotFoundError) as exc:
            bad += 1
            console.print(f"[red]FAIL[/] {role:<40} {exc}")
    if bad:
        raise typer.Exit(1)


@app.command()
def runbook(deployment: str) -> None:
    """The live deployment's runbook: load, serve, roll back."""
    settings = Settings()
    manifest_id = _live(settings, deployment)
    registered = [e for e in _registered(settings) if e.manifest_id == manifest_id]
    console.print(_store(settings).read_bytes(registered[-1].runbook_digest).decode(), markup=False)


@app.command()
def rollback(deployment: str, to: str = typer.Option("", help="manifest id; default: the previous one")) -> None:
    """Promote the previously live manifest of a deployment again."""
    event = RollbackRequested(run_id=uuid4(), deployment=deployment, to_manifest_id=to or None)

    async def go() -> None:
        async with Client(Settings()) as client:
            await client.publish(event)

    _run(go())
    console.print(f"rollback of {deployment} requested (run {event.run_id}); `weightflow status {event.run_id}`")


@app.command()
def canary(deployment: str, timeout: float = typer.Option(120, help="seconds to wait for the result")) -> None:
    """Run the deployment's evaluation canary now."""
    event = CanaryRequested(run_id=uuid4(), deployment=deployment)

    async def go() -> RunTracker:
        async with Client(Settings()) as client:
            return await track(client, event, timeout=timeout,
                               done=lambda e: isinstance(e, CanaryPassed | CanaryFailed))

    tracker = _run(go())
    results = [e for e in tracker.events if isinstance(e, CanaryPassed | CanaryFailed)]
    if not results:
        err.print(f"[red]no canary result within {timeout:g} s[/] (is the monitoring service running, "
                  f"and is {deployment!r} a promoted deployment?)")
        raise typer.Exit(1)
    console.print(summary(results[0]), markup=False)
    if isinstance(results[0], CanaryFailed):
        raise typer.Exit(1)


@app.command()
def predict(deployment: str, texts: list[str] = typer.Argument(..., help="texts to classify")) -> None:
    """Classify texts with the live deployment, loaded from its verified manifest."""
    from shared.modeling.evaluation import classify
    from shared.serving import load_deployment, read_manifest

    settings = Settings()
    store = _store(settings)
    manifest = read_manifest(store, _live(settings, deployment))
    encoder = load_deployment(store, manifest, settings.device)
    for text, label in zip(texts, classify(encoder, texts, manifest.requirements.task.labels), strict=True):
        console.print(f"{label}\t{text}", markup=False)


def _dead_letters(settings: Settings) -> list[DeadLettered]:
    return [e for e in _run(_history(settings)) if isinstance(e, DeadLettered)]


def _letter_payload(settings: Settings, letter: DeadLettered) -> bytes:
    """The original bytes; an exhausted-deliveries letter carries none, they stay in the stream."""
    if letter.payload_b64 or letter.stream_sequence is None:
        return base64.b64decode(letter.payload_b64)

    async def fetch(sequence: int) -> bytes:
        async with Client(settings) as client:
            return await client.stored_payload(sequence)

    return _run(fetch(letter.stream_sequence))


@dlq_app.command("ls")
def dlq_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """Dead letters, oldest first."""
    letters = _dead_letters(Settings())
    if as_json:
        console.print_json(json.dumps([json.loads(e.model_dump_json(exclude={"payload_b64"})) for e in letters]))
        return
    for e in letters:
        console.print(f"{e.event_id}  {e.service:<13} {e.original_subject:<40} {e.error[:80]}", markup=False)


@dlq_app.command("show")
def dlq_show(letter_id: str) -> None:
    """One dead letter with its error, stream sequence, trace id and original payload."""
    settings = Settings()
    for e in _dead_letters(settings):
        if str(e.event_id).startswith(letter_id):
            data = json.loads(e.model_dump_json())
            data["payload"] = _letter_payload(settings, e).decode(errors="replace")
            console.print_json(json.dumps(data))
            return
    err.print(f"[red]error:[/] no dead letter {letter_id!r}; see `weightflow dlq ls`")
    raise typer.Exit(2)


@dlq_app.command("replay")
def dlq_replay(letter_id: str) -> None:
    """Publish a dead letter's original payload to its subject again (after fixing the cause)."""
    settings = Settings()
    for e in _dead_letters(settings):
        if str(e.event_id).startswith(letter_id):
            payload = _letter_payload(settings, e)

            async def go(letter: DeadLettered = e, payload: bytes = payload) -> None:
                async with Client(settings) as client:
                    await client.publish_raw(letter.original_subject, payload, f"replay-{letter.event_id}-{uuid4()}")

            _run(go())
            console.print(f"replayed {e.event_id} to {e.original_subject}")
            return
    err.print(f"[red]error:[/] no dead letter {letter_id!r}; see `weightflow dlq ls`")
    raise typer.Exit(2)


@app.command("nats-config")
def nats_config(
    out: Path = typer.Option(Path("nats/nats-server.conf"), "--out", help="nats-server config file to write"),
    env_dir: Path | None = typer.Option(None, help="where the per-user <user>.env files go; default: next to --out"),
    url_host: str = typer.Option("nats", help="host the services and CLI reach NATS at (the compose service name)"),
    port: int = typer.Option(4222, help="client port"),
    listen_host: str = typer.Option("0.0.0.0", help="address nats-server listens on"),
    store_dir: str = typer.Option("/js", help="JetStream store directory inside the NATS container"),
    monitor_port: int = typer.Option(8222, help="HTTP monitoring port (0: none)"),
    rotate: bool = typer.Option(False, help="new passwords for all (default: keep those in existing .env files)"),
) -> None:
    """Write a nats-server config where each service may touch only its own subjects and consumers.

    Also writes one `<user>.env` per user (WEIGHTFLOW_NATS_URL with its password; services also get
    WEIGHTFLOW_DECLARE_STREAM=false) for compose `env_file:` or a Kubernetes secret. The `admin` user
    (CLI) creates the stream and reads history; `alerting` may only subscribe to drift/canary events.
    """
    from shared import nats_auth

    env_dir = env_dir or out.parent
    services = nats_auth.load_services(SERVICES)
    users = nats_auth.user_names(services)
    existing = {} if rotate else {u: p for u in users if (p := nats_auth.read_password(env_dir / f"{u}.env"))}
    passwords = nats_auth.generate_passwords(users, existing)
    config = nats_auth.build_config(services, passwords, stream=Settings().stream, host=listen_host, port=port,
                                    store_dir=store_dir, http_port=monitor_port or None)

    def write_private(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(text)

    write_private(out, nats_auth.render_config(config))
    service_names = {s.name for s in services}
    for user in users:
        write_private(env_dir / f"{user}.env", nats_auth.credentials_env(
            user, passwords[user], url_host, port, service=user in service_names))
    kept = sorted(existing)
    console.print(f"wrote {out} and {len(users)} credential files in {env_dir} ({', '.join(users)}); "
                  f"{'kept passwords of ' + ', '.join(kept) if kept else 'new passwords'}")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
