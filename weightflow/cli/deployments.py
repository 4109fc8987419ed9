"""Deployments: the registry, runbooks, rollback, canaries, predictions and the HTTP server of the live model."""

from __future__ import annotations

import errno
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import typer

from weightflow.cli.common import Refused, console, err, history, positive, request, store
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, CanaryRequested
from weightflow.contracts.registry import DeploymentPromoted, ModelRegistered, RollbackRequested, RolledBack
from weightflow.contracts.workflow import RequestRefused
from weightflow.render import summary
from weightflow.shared.artifacts import IntegrityError
from weightflow.shared.settings import Settings

registry_app = typer.Typer(help="Registered manifests.", no_args_is_help=True)


def _registered(settings: Settings) -> list[ModelRegistered]:
    return [e for e in history(settings) if isinstance(e, ModelRegistered)]


def live_manifest(settings: Settings, deployment: str) -> str:
    promoted = [e for e in history(settings) if isinstance(e, DeploymentPromoted) and e.deployment == deployment]
    if not promoted:
        err.print(f"[red]error:[/] deployment {deployment!r} has no promoted manifest; see `weightflow registry ls`")
        raise typer.Exit(2)
    return promoted[-1].manifest_id


@registry_app.command("ls")
def registry_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered manifests, oldest first."""
    rows: list[dict[str, Any]] = [{"manifest_id": e.manifest_id, "deployment": e.deployment, "run_id": str(e.run_id),
             "requirements_version": e.requirements_version, "registered": e.occurred_at.isoformat()}
            for e in _registered(Settings())]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    for r in rows:
        console.print(f"{r['manifest_id']}  {r['deployment']:<20} v{r['requirements_version']:<3} "
                      f"{r['registered'][:19]}  run {r['run_id'][:8]}")


@registry_app.command("show")
def registry_show(manifest_id: str) -> None:
    """The manifest JSON: every pinned checksum, the quantization, the adapter and its data."""
    try:
        console.print_json(store(Settings()).read_bytes(manifest_id).decode())
    except (ValueError, FileNotFoundError, IntegrityError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@registry_app.command("verify")
def registry_verify(manifest_id: str) -> None:
    """Recompute the sha256 of every file the manifest pins; exit 1 on any mismatch."""
    from weightflow.contracts.registry import Manifest

    artifacts = store(Settings())
    try:
        manifest = Manifest.model_validate(artifacts.read_json(manifest_id))
    except (ValueError, FileNotFoundError, IntegrityError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    bad = 0
    for role, digest in sorted(manifest.checksums().items()):
        try:
            artifacts.verify(digest)
            console.print(f"[green]ok[/]   {role:<40} {digest}")
        except (IntegrityError, FileNotFoundError) as exc:
            bad += 1
            console.print(f"[red]FAIL[/] {role:<40} {exc}")
    if bad:
        raise typer.Exit(1)


def runbook(deployment: str) -> None:
    """The live deployment's runbook: load, serve, roll back."""
    settings = Settings()
    manifest_id = live_manifest(settings, deployment)
    registered = [e for e in _registered(settings) if e.manifest_id == manifest_id]
    console.print(store(settings).read_bytes(registered[-1].runbook_digest).decode(), markup=False)


def rollback(deployment: str, to: str = typer.Option("", help="manifest id; default: the release before the live one"),
             timeout: float = typer.Option(60, callback=positive, help="seconds to wait for the answer")) -> None:
    """Promote the release before the live one (walking back one step each time), or a named one."""
    event = RollbackRequested(run_id=uuid4(), deployment=deployment, to_manifest_id=to or None)
    tracker = request(Settings(), event, lambda e: isinstance(e, RolledBack | RequestRefused), timeout)
    answer = next((e for e in tracker.events if isinstance(e, RolledBack | RequestRefused)), None)
    if isinstance(answer, RolledBack):
        console.print(summary(answer), markup=False)
        if answer.to_older_requirements:
            err.print(f"[yellow]note:[/] {answer.to_manifest_id[:12]} was registered under requirements "
                      f"v{answer.to_requirements_version}; v{answer.live_requirements_version} is the newest")
        return
    err.print(f"[red]rollback refused:[/] {answer.reason if answer else f'no answer within {timeout:g} s'}",
              highlight=False)
    raise typer.Exit(1)


def canary(deployment: str,
           timeout: float = typer.Option(300, callback=positive, help="seconds to wait for the result")) -> None:
    """Run the deployment's evaluation canary now; exit 1 when it fails."""
    event = CanaryRequested(run_id=uuid4(), deployment=deployment)
    tracker = request(Settings(), event, lambda e: isinstance(e, CanaryPassed | CanaryFailed | RequestRefused), timeout)
    answer = next((e for e in tracker.events if isinstance(e, CanaryPassed | CanaryFailed | RequestRefused)), None)
    if answer is None:
        err.print(f"[red]no canary result within {timeout:g} s[/] (is the monitoring service running?)")
        raise typer.Exit(1)
    if isinstance(answer, RequestRefused):
        err.print(f"[red]canary refused:[/] {answer.reason}", highlight=False)
        raise typer.Exit(1)
    console.print(summary(answer), markup=False)
    if isinstance(answer, CanaryFailed):
        raise typer.Exit(1)


def predict(deployment: str, texts: list[str] = typer.Argument(..., help="inputs for the deployed model")) -> None:
    """Run the live deployment on inputs, loaded from its verified manifest."""
    from weightflow.shared.modeling.stored import load_deployment, read_manifest, task_of

    settings = Settings()
    artifacts = store(settings)
    manifest = read_manifest(artifacts, live_manifest(settings, deployment))
    try:
        loaded = load_deployment(artifacts, manifest, settings.device)
    except (ValueError, IntegrityError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    outputs = task_of(manifest.requirements.task).runtime().predict(loaded, manifest.requirements.task, texts)
    for text, output in zip(texts, outputs, strict=True):
        console.print(f"{output}\t{text}", markup=False)


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads: an address that cannot be used is refused in a
    second, not after the load (uvicorn logged it and hung, or exited 1 with a traceback). Connections are
    refused, not queued, until uvicorn listens on it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)  # as uvicorn
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, UnicodeError) as exc:
        sock.close()
        if isinstance(exc, socket.gaierror | UnicodeError) or getattr(exc, "errno", None) == errno.EADDRNOTAVAIL:
            why = f"--host {host!r} is not an address of this machine"
            raise Refused(f"{why}; use 127.0.0.1, 0.0.0.0 (every interface) or one of its addresses") from None
        if exc.errno == errno.EADDRINUSE:
            raise Refused(f"port {port} on {host} is in use by another process; choose another --port") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise Refused(f"no permission to listen on port {port} (ports below 1024 need privileges); choose a "
                          "--port from 1024") from None
        raise Refused(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _http_url(value: str) -> str:
    """Typer callback: --public-url is where the canary sends requests, so it must be one."""
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise typer.BadParameter("must be an http:// or https:// URL with a host, e.g. http://10.0.0.5:8000")
    return value


def serve(deployment: str,
          host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0: every interface)"),
          port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
          manifest: str = typer.Option("", help="serve this manifest and do not follow promotions"),
          max_batch: int = typer.Option(8, min=1, help="inputs per forward pass (the memory budget plans for 8)"),
          max_wait_ms: float = typer.Option(0.0, min=0, max=60_000,
                                            help="how long a lone request waits for company (requests arriving "
                                                 "while the model runs share the next pass)"),
          public_url: str = typer.Option("", callback=_http_url, help="the URL the canary reaches this server at "
                                                  "(default: http://HOST:PORT)"),
          announce: bool = typer.Option(True, help="tell monitoring where the deployment is served, so the canary "
                                                   "probes this server (not with --manifest)"),
          dedicated_cores: bool = typer.Option(False, "--dedicated-cores",
                                               help="the server has its CPU cores to itself: OpenMP workers spin a "
                                                    "few ms between operations instead of sleeping (more throughput, "
                                                    "lower latency; far worse tails beside busy processes or under a "
                                                    "CPU quota). An OMP_WAIT_POLICY you set wins"),
          header_timeout: float | None = typer.Option(None, callback=positive, help="seconds a client has to send "
                                                      "a request's headers, from connecting or from the request's "
                                                      "first byte (default: WEIGHTFLOW_SERVE_HEADER_TIMEOUT_S, 10)"),
          body_timeout: float | None = typer.Option(None, callback=positive, help="seconds a client has to send a "
                                                    "request's whole body once its headers are in; then 408 "
                                                    "(default: WEIGHTFLOW_SERVE_BODY_TIMEOUT_S, 60)"),
          keep_alive_timeout: int | None = typer.Option(None, min=1, help="seconds an idle keep-alive connection "
                                                        "is kept (default: WEIGHTFLOW_SERVE_KEEP_ALIVE_S, 5)")) -> None:
    """Serve the live model over HTTP (OpenAI-compatible routes), swapping on promotion and rollback.

    With WEIGHTFLOW_SERVE_API_KEY set, clients must send `Authorization: Bearer <key>`.
    """
    import asyncio
    import os

    from weightflow.shared.modeling import openmp_spins

    if dedicated_cores:
        openmp_spins()  # before torch loads
    import uvicorn

    from weightflow.serving.app import create_app
    from weightflow.serving.live import LiveDeployment, announce_endpoint
    from weightflow.serving.server import ClientTimeouts, server_config
    from weightflow.shared.ops_server import announce as announce_target
    from weightflow.shared.telemetry import setup_tracing

    settings = Settings()
    timeouts = ClientTimeouts(header_s=header_timeout or settings.serve_header_timeout_s,
                              body_s=body_timeout or settings.serve_body_timeout_s,
                              keep_alive_s=keep_alive_timeout or settings.serve_keep_alive_s)
    sock = _listen(host, port)
    setup_tracing("serve", settings)
    live = LiveDeployment(settings, deployment, pinned=manifest or None)
    url = public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    announcing = announce and not manifest

    async def main() -> None:
        try:
            await live.start()
        except (LookupError, ValueError, FileNotFoundError, IntegrityError, ConnectionError) as exc:
            err.print(f"[red]error:[/] cannot serve {deployment!r}: {exc}", highlight=False)
            raise typer.Exit(2) from exc
        app = create_app(live, max_batch=max_batch, max_wait_s=max_wait_ms / 1000,
                         api_key=os.environ.get("WEIGHTFLOW_SERVE_API_KEY") or None)
        config = server_config(app, host=host, port=port, timeouts=timeouts, log_level="info",
                               timeout_graceful_shutdown=30)

        class AnnouncingServer(uvicorn.Server):
            """Announces itself once listening and withdraws on a graceful stop (inside `serve`, before
            uvicorn re-raises the signal that stopped it)."""

            target: Path | None = None

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                if self.started and settings.ops_port == 0:  # /metrics found through the home's file_sd targets
                    self.target = announce_target(settings.home, "serve", host, port,
                                                  {"service": "serve", "kind": "serve", "deployment": deployment})
                if announcing and self.started:
                    await announce_endpoint(settings, live, url, online=True)

            async def shutdown(self, sockets: Any = None) -> None:
                await super().shutdown(sockets)
                if self.target is not None:
                    self.target.unlink(missing_ok=True)
                if announcing:
                    await announce_endpoint(settings, live, url, online=False)

        await AnnouncingServer(config).serve(sockets=[sock])

    asyncio.run(main())


def _moment(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        err.print(f"[red]error:[/] --at {text!r} is not a time; write it as ISO 8601, e.g. 2026-12-07T01:30:00Z",
                  highlight=False)
        raise typer.Exit(2) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def history_command(deployment: str,
                    at: str | None = typer.Option(None, "--at", help="ISO time (UTC unless it says): what was live"),
                    as_json: bool = typer.Option(False, "--json")) -> None:
    """What was live on a deployment and why it changed (promotions, rollbacks, releases kept from going live);
    with --at, the release that was live at that time."""
    from weightflow.live_history import changes, live_at

    moment = _moment(at)
    found = changes(history(Settings()), deployment)
    if not found:
        err.print(f"[red]error:[/] deployment {deployment!r} has no registered release; see `weightflow registry ls`")
        raise typer.Exit(1)
    shown = found
    if moment is not None:
        live = live_at(found, moment)
        if live is None:
            err.print(f"nothing of {deployment!r} was live at {moment.isoformat()} (its first promotion was "
                      f"{next((c.at.isoformat() for c in found if c.changed_live), 'never')})", highlight=False)
            raise typer.Exit(1)
        shown = [live]
    if as_json:
        console.print_json(json.dumps([{"at": c.at.isoformat(), "kind": c.kind, "manifest_id": c.manifest_id,
                                        "why": c.why, "run_id": c.run_id} for c in shown]))
        return
    for c in shown:
        prefix = f"live at {moment.isoformat()}: " if moment is not None else ""
        console.print(f"{prefix}{c.at.isoformat()[:19]}  {c.kind:<12} {c.manifest_id[:12]}  {c.why}", markup=False,
                      highlight=False)


def register(app: typer.Typer) -> None:
    for command in (runbook, rollback, canary, predict, serve):
        app.command()(command)
    app.command("history")(history_command)
