"""NATS permissions for the scaled deployment: one user per service, each confined to its own subjects.

Pure functions: from the service declarations (`Service.handles` gives the consumed events and thereby the
durable consumers, `Service.publishes` the emitted ones) they build a nats-server configuration in which

* each service user may publish only the stream subjects it emits (plus `DeadLettered`, which every
  service may send) and the JetStream API requests for *its own* durable consumers: look one up, create
  it with exactly its own filter subject, fetch from it and ack what it fetched. No `$JS.>` or
  `$JS.API.>` grant, no stream management; it may subscribe only to its own reply inbox
  (`Service.inbox_prefix()`), so it cannot read replies, or fetched messages, meant for another service;
* `admin` (the operator's CLI: creates the stream, reads history, replays dead letters) may do anything;
* `alerting` may only subscribe (core NATS) to the drift and canary outcome subjects, and publish nothing.

Because services may not create the stream, run them with `WEIGHTFLOW_DECLARE_STREAM=false` and let the
admin create it first (any `weightflow` CLI command does, through `ensure_stream`).

The result is a JSON document, which nats-server reads as its configuration format.
"""

from __future__ import annotations

import importlib
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from contracts.base import Event
from contracts.monitoring import CanaryFailed, CanaryPassed, DriftDetected
from contracts.workflow import DeadLettered
from shared.bus import Service
from shared.settings import Settings

ADMIN_USER = "admin"
ALERTING_USER = "alerting"
ALERTING_EVENTS: tuple[type[Event], ...] = (DriftDetected, CanaryFailed, CanaryPassed)
ALWAYS_PUBLISHED: tuple[type[Event], ...] = (DeadLettered,)


@dataclass(frozen=True)
class ServiceGrant:
    """What one service does on the bus, which is all its NATS user may do."""

    name: str
    inbox_prefix: str
    consumes: tuple[tuple[str, str, str], ...]  # (stream, durable consumer name, filter subject)
    publishes: tuple[str, ...]  # stream subjects

    @classmethod
    def of(cls, service: Service, stream: str = "WF") -> ServiceGrant:
        events = {e.subject(): e for e in (*service.publishes, *ALWAYS_PUBLISHED)}
        return cls(
            name=service.name,
            inbox_prefix=service.inbox_prefix(),
            consumes=tuple(sorted(service.consumers(Settings(stream=stream)))),
            publishes=tuple(sorted(events)),
        )


def load_services(names: Iterable[str]) -> list[Service]:
    """The declared `Service` of each named service module (`services.<name>.app`)."""
    return [importlib.import_module(f"services.{name}.app").service for name in names]


def consumer_api_subjects(stream: str, durable: str, filter_subject: str) -> list[str]:
    """The JetStream requests a pull subscriber (nats-py `pull_subscribe`, as faststream uses it) makes
    for one durable consumer, and nothing for any other consumer.

    `CONSUMER.CREATE.<stream>.<durable>.<filter>` names the filter subject, and the server refuses a
    request whose config filters anything else: the user can create its consumer only for the events
    it handles, not one over `wf.>` that would read every stage's events.
    """
    return [
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{filter_subject}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",  # ack, nak, in-progress and term of the messages it fetched
    ]


def service_permissions(grant: ServiceGrant, stream: str) -> dict[str, Any]:
    publish = list(grant.publishes)
    for consumer_stream, durable, filter_subject in grant.consumes:
        publish += consumer_api_subjects(consumer_stream, durable, filter_subject)
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [f"{grant.inbox_prefix}.>"]},
    }


def alerting_permissions(events: Sequence[type[Event]] = ALERTING_EVENTS) -> dict[str, Any]:
    return {
        "publish": {"deny": [">"]},
        "subscribe": {"allow": sorted(e.subject() for e in events)},
    }


def admin_permissions() -> dict[str, Any]:
    return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


def user_names(services: Iterable[Service]) -> list[str]:
    names = [s.name for s in services]
    reserved = {ADMIN_USER, ALERTING_USER}.intersection(names)
    if reserved:
        raise ValueError(f"service names {sorted(reserved)} collide with the built-in NATS users")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate service names in {names}")
    return [*names, ADMIN_USER, ALERTING_USER]


def generate_passwords(users: Iterable[str], existing: Mapping[str, str] | None = None) -> dict[str, str]:
    """A random URL-safe password per user, keeping any `existing` one (so regenerating does not rotate)."""
    existing = existing or {}
    return {u: existing.get(u) or secrets.token_urlsafe(24) for u in users}


def build_config(
    services: Sequence[Service],
    passwords: Mapping[str, str],
    *,
    stream: str = "WF",
    host: str = "0.0.0.0",
    port: int = 4222,
    store_dir: str | Path | None = "/js",
    http_port: int | None = None,
) -> dict[str, Any]:
    """The nats-server configuration as a dict (see `render_config`): listen address, JetStream, users.

    `store_dir=None` enables JetStream without naming a store (the server's `-sd` flag then names it).
    """
    user_names(services)  # refuses reserved or duplicate service names
    users: list[dict[str, Any]] = []
    for service in services:
        users.append({"user": service.name, "password": passwords[service.name],
                      "permissions": service_permissions(ServiceGrant.of(service, stream), stream)})
    users.append({"user": ADMIN_USER, "password": passwords[ADMIN_USER], "permissions": admin_permissions()})
    users.append({"user": ALERTING_USER, "password": passwords[ALERTING_USER],
                  "permissions": alerting_permissions()})
    config: dict[str, Any] = {"listen": f"{host}:{port}"}
    if http_port is not None:
        config["http_port"] = http_port
    config["jetstream"] = {"store_dir": str(store_dir)} if store_dir is not None else {}
    config["authorization"] = {"users": users}
    return config


def render_config(config: Mapping[str, Any]) -> str:
    """nats-server reads JSON as its config syntax (strings quoted, so `$JS...` is no variable)."""
    return "# generated by `weightflow nats-config`; holds passwords: keep it private\n" + json.dumps(
        config, indent=2) + "\n"


def nats_url(user: str, password: str, host: str, port: int) -> str:
    return f"nats://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"


def credentials_env(user: str, password: str, host: str, port: int, *, service: bool) -> str:
    """A `.env` file for one user: its NATS URL, and for services the flag that leaves the stream alone."""
    lines = [f"WEIGHTFLOW_NATS_URL={nats_url(user, password, host, port)}"]
    if service:
        lines.append("WEIGHTFLOW_DECLARE_STREAM=false")
    return "\n".join(lines) + "\n"


def read_password(env_file: Path) -> str | None:
    """The password in a `.env` file written by `credentials_env`, or None."""
    if not env_file.exists():
        return None
    for line in env_file.read_text().splitlines():
        if line.startswith("WEIGHTFLOW_NATS_URL="):
            password = urlsplit(line.split("=", 1)[1].strip()).password
            return unquote(password) if password else None
    return None
