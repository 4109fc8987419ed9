"""Operating weightflow: `doctor` (is anything stuck, full or halted?) and `nats-config` (permissions)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import Counter
from pathlib import Path

import typer

from weightflow.backlog import backlog_of, merge_letters
from weightflow.cli.common import console, err, run
from weightflow.client import Client
from weightflow.contracts.base import Event
from weightflow.contracts.requirements import RequirementsAccepted
from weightflow.contracts.topology import SERVICES
from weightflow.contracts.workflow import DeadLettered, WorkflowHalted, WorkflowResumed
from weightflow.shared.natsd import StoreHealth, store_health
from weightflow.shared.settings import Settings

STALE_OUTBOX_S = 60.0
# Free space the next step needs: its biggest write is a model-sized artifact (a quantized variant, a copy
# materialized to load), at most the largest one stored so far, written beside a temporary copy; plus room
# for JetStream blocks, the database's WAL and logs. Never less than the floor: a fresh store knows no sizes.
DISK_MARGIN_BYTES = 64 << 20
DISK_FLOOR_BYTES = 128 << 20


def disk_needed(largest_artifact_bytes: int) -> int:
    """What the next step needs free: 2 x the largest artifact + a margin, at least the floor."""
    return max(DISK_FLOOR_BYTES, 2 * largest_artifact_bytes + DISK_MARGIN_BYTES)


def largest_artifact(objects: Path) -> int:
    """Size of the largest object in an artifact store's `objects/<2 hex>/<rest>` (0 when there is none)."""
    largest = 0
    with contextlib.suppress(OSError):
        for shard in os.scandir(objects):
            if shard.is_dir(follow_symlinks=False):
                for entry in os.scandir(shard.path):
                    if entry.is_file(follow_symlinks=False):
                        largest = max(largest, entry.stat(follow_symlinks=False).st_size)
    return largest


def store_finding(monitor_url: str | None, health: StoreHealth | None) -> str | None:
    """What nats-server's own health says about the JetStream store, when it says something is wrong."""
    if monitor_url is None or health is None:
        return None
    if not health.reachable:
        return f"nats-server's monitoring endpoint {monitor_url} did not answer: the store's state is unknown"
    if health.store_errors:
        return (f"JetStream store not writable: {health.store_errors[0]}. Free space under the store; nats-server "
                "keeps this error until it restarts (`weightflow up` restarts it once space is back)")
    return None


def doctor() -> None:
    """Check the stack: NATS and its storage (on a cluster: every node, and each stream's and consumer's leader
    and replicas), stuck outboxes, parked events, dead letters, halted deployments, disk space. Exit 1 when
    something needs an operator."""
    from nats.js.errors import NotFoundError

    from weightflow.cluster_health import cluster_health
    from weightflow.shared.bus.outbox import oldest_unpublished_age_s, parked
    from weightflow.shared.bus.streams import stream_configs
    from weightflow.shared.db import make_engine

    settings = Settings()
    problems: list[str] = []

    async def stream_state() -> tuple[list[str], list[Event], int]:
        notes: list[str] = []
        async with Client(settings) as client:
            info = await client.js.account_info()
            limit = info.limits.max_storage
            used = info.storage
            notes.append(f"JetStream storage {used / 2**20:.1f} MiB used" +
                         (f" of {limit / 2**20:.0f} MiB" if limit and limit > 0 else ""))
            if limit and limit > 0 and used > 0.9 * limit:
                problems.append(f"JetStream storage is {used / limit:.0%} full: raise the account limit or purge")
            for config in stream_configs(settings):
                try:
                    s = await client.js.stream_info(config.name)
                    notes.append(f"stream {config.name}: {s.state.messages} messages, {s.state.bytes / 2**20:.1f} MiB")
                except NotFoundError:
                    problems.append(f"stream {config.name} is missing (any weightflow CLI command creates it)")
                except TimeoutError:  # its replicas are electing a leader (seconds), or too few of them are up
                    problems.append(f"stream {config.name} did not answer: it has no leader; on a cluster, start the "
                                    "nats-server nodes that are down")
            cluster_notes, cluster_problems = await cluster_health(client.js, settings)  # nodes, leaders, lag
            notes.extend(cluster_notes)
            problems.extend(cluster_problems)
            events = await client.history()
        return notes, events, len(client.skipped)

    notes, events, skipped = run(stream_state())
    monitor_url = settings.resolved_nats_monitor_url()
    store = store_finding(monitor_url, store_health(monitor_url) if monitor_url else None)
    if store:
        problems.append(store)
    for note in notes:  # storage figures are no "ok" while the store refuses writes
        console.print(f"{'[yellow]--[/]' if store else '[green]ok[/]'}   {note}", highlight=False)
    if monitor_url is None:  # nothing was checked: no "ok", and no problem either
        console.print("[yellow]--[/]   JetStream store health not read: set WEIGHTFLOW_NATS_MONITOR_URL (nats-server's "
                      "monitoring port) to have it checked", highlight=False)
    if skipped:
        problems.append(f"{skipped} message(s) on the stream are not readable events (see `weightflow events`)")
    backlog, _ = backlog_of(settings)  # dead letters the database holds count, on the stream or not
    merged = merge_letters((e for e in events if isinstance(e, DeadLettered)), backlog)
    letters = Counter((e.service, e.reason) for e, _ in merged)
    for (service, reason), count in sorted(letters.items()):
        problems.append(f"{count} dead letter(s) from {service} ({reason}); see `weightflow dlq ls`")
    unannounced = sum(1 for _, on_stream in merged if not on_stream)
    if unannounced:
        problems.append(f"{unannounced} of them in the database only: not yet published to the stream")
    halted: dict[str, str] = {}
    for e in events:
        if isinstance(e, WorkflowHalted):
            halted[e.deployment] = e.reason
        elif isinstance(e, WorkflowResumed) or (isinstance(e, RequirementsAccepted) and e.context.attempt == 0):
            halted.pop(e.deployment if isinstance(e, WorkflowResumed) else e.context.requirements.deployment.name, None)
    for deployment, reason in halted.items():
        problems.append(f"{deployment} is halted: {reason} (`weightflow change` or `weightflow resume {deployment}`)")
    try:
        engine = make_engine(settings.resolved_database_url())
        for name in SERVICES:
            age = oldest_unpublished_age_s(engine, name)
            if age > STALE_OUTBOX_S:
                problems.append(f"{name}: its oldest unpublished event waits for {age:.0f} s (is the service running "
                                "and NATS writable?)")
        for row in parked(engine):
            problems.append(f"{row.service}: event {row.event_id} parked, never to be published: {row.last_error}")
        console.print(f"[green]ok[/]   database {engine.url.render_as_string(hide_password=True)}")
    except Exception as exc:  # an unreachable or foreign database is a finding, not a crash
        problems.append(f"database: {type(exc).__name__}: {str(exc)[:200]}")
    from weightflow.operations import readiness

    for ok, line in readiness(settings.home):  # every announced process's own /readyz
        if ok:
            console.print(f"[green]ok[/]   {line}", highlight=False)
        else:
            problems.append(line)
    free = shutil.disk_usage(settings.home if settings.home.exists() else Path(".")).free
    largest = largest_artifact(settings.resolved_artifacts_dir() / "objects")
    needed = disk_needed(largest)
    disk = (f"{free / 2**20:.0f} MiB free under {settings.home}; the next step needs about {needed / 2**20:.0f} MiB "
            f"(2 x the largest artifact, {largest / 2**20:.0f} MiB, + {DISK_MARGIN_BYTES >> 20} MiB)")
    if free < needed:
        problems.append(f"only {disk}: artifacts and JetStream will fail")
    else:
        console.print(f"[green]ok[/]   disk: {disk}", highlight=False)
    for problem in problems:
        err.print(f"[red]FIND[/] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print("[green]all good[/]")


def nats_config(
    out: Path = typer.Option(Path("nats/nats-server.conf"), "--out", help="nats-server config file to write"),
    env_dir: Path | None = typer.Option(None, help="where the per-user <user>.env files go; default: next to --out"),
    url_host: str = typer.Option("nats", help="host the services and CLI reach a single server at (with "
                                 "--cluster-nodes: the nodes' hosts)"),
    port: int = typer.Option(4222, help="client port"),
    listen_host: str = typer.Option("0.0.0.0", help="address nats-server listens on"),
    store_dir: str = typer.Option("/js", help="JetStream store directory inside the NATS container"),
    monitor_port: int = typer.Option(8222, help="HTTP monitoring port (0: none)"),
    rotate: bool = typer.Option(False, help="new passwords for all (default: keep those in existing .env files)"),
    cluster_nodes: str | None = typer.Option(
        None, "--cluster-nodes", help="a JetStream cluster instead of one server: its nodes as name[:host[:route "
        "port]],... (e.g. nats-1,nats-2,nats-3); writes one <name>.conf per node next to --out, and .env files "
        "whose URLs list every node"),
    cluster_port: int = typer.Option(6222, help="route (cluster) port of the nodes that name none"),
    cluster_name: str = typer.Option("weightflow", help="the cluster's name"),
) -> None:
    """Write a nats-server config where each service may touch only its own subjects and consumers (and the
    artifact bucket), one per node with --cluster-nodes.

    Also writes one `<user>.env` per user (WEIGHTFLOW_NATS_URL with its password; services also get
    WEIGHTFLOW_DECLARE_STREAM=false) for compose `env_file:` or a Kubernetes secret. The `admin` user
    (CLI) creates the streams and the artifact bucket and reads history; `alerting` may only subscribe to alert
    events. A cluster's routes admit only a route user whose password the node configs carry.
    """
    from weightflow.shared import nats_auth

    env_dir = env_dir or out.parent
    try:
        nodes = nats_auth.parse_cluster_nodes(cluster_nodes, cluster_port) if cluster_nodes else []
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--cluster-nodes") from None
    services = nats_auth.load_services(SERVICES)
    users = nats_auth.user_names(services)
    existing = {} if rotate else {u: p for u in users if (p := nats_auth.read_password(env_dir / f"{u}.env"))}
    passwords = nats_auth.generate_passwords(users, existing)
    settings = Settings()
    config = nats_auth.build_config(services, passwords, stream=settings.stream,
                                    artifact_bucket=settings.artifact_bucket, host=listen_host, port=port,
                                    store_dir=store_dir, http_port=monitor_port or None)

    def write_private(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(text)

    written: list[Path] = []
    if nodes:
        files = [out.parent / f"{node.name}.conf" for node in nodes]
        route_password = None if rotate else next(
            (p for f in files if (p := nats_auth.read_route_password(f))), None)
        route_password = route_password or nats_auth.generate_passwords(["route"])["route"]
        try:
            for node, path in zip(nodes, files, strict=True):
                node_config = nats_auth.cluster_node_config(config, node, nodes, route_password,
                                                            cluster_name=cluster_name, listen_host=listen_host)
                write_private(path, nats_auth.render_config(node_config))
                written.append(path)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--cluster-nodes") from None
        hosts: str | list[str] = [node.host for node in nodes]
    else:
        write_private(out, nats_auth.render_config(config))
        written.append(out)
        hosts = url_host
    service_names = {s.name for s in services}
    for user in users:
        write_private(env_dir / f"{user}.env", nats_auth.credentials_env(
            user, passwords[user], hosts, port, service=user in service_names))
    kept = sorted(existing)
    console.print(f"wrote {', '.join(map(str, written))} and {len(users)} credential files in {env_dir} "
                  f"({', '.join(users)}); {'kept passwords of ' + ', '.join(kept) if kept else 'new passwords'}",
                  highlight=False)


def setup_quantization(location: Path | None = typer.Option(None, help="where to build it (default: "
                                                                        "~/.cache/weightflow/quant-env)")) -> None:
    """Build the quantization environment (llmcompressor, for the w4a16 and awq schemes) beside this one."""
    from weightflow.shared.modeling.quantizers import quant_env

    python = quant_env.setup(location, log=lambda line: console.print(line, markup=False))
    console.print(f"ready: {python}" + ("" if location is None else
                                        f"; export WEIGHTFLOW_QUANT_PYTHON={python} for the services"))


def prometheus_config(
    out: Path = typer.Option(Path("prometheus"), "--out", help="folder for prometheus.yml and alert-rules.yml"),
    interval_s: float = typer.Option(15.0, "--interval", min=1.0, help="scrape and rule evaluation interval, s"),
) -> None:
    """Write a Prometheus config that scrapes every weightflow process of this home (found through the
    targets they announce under <home>/ops/targets/) and loads weightflow's alert rules."""
    from weightflow.operations import write_prometheus_config

    path = write_prometheus_config(out, Settings().home, interval_s=interval_s)
    console.print(f"wrote {path} and {path.parent / 'alert-rules.yml'}; run: prometheus --config.file={path}",
                  highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
    app.command("prometheus-config")(prometheus_config)
    app.command("setup-quantization")(setup_quantization)
    app.command("nats-config")(nats_config)
