"""The streams the workflow lives in, and publishing into them.

* `WF` holds every event (`wf.<stage>.<event>`), with a duplicate window: `event_id` is sent as
  `Nats-Msg-Id`, so a publish retried after a timeout is stored once.
* `WF_RUNS` is the run registry: one message per run (`wfruns.<run_id>`), written by the requirements
  service when it accepts a run. A service acts on an event only when its run is registered, so an
  event forged into a run that never existed is dead-lettered as an orphan.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any
from uuid import UUID

from nats.js.api import StreamConfig
from nats.js.errors import APIError, NotFoundError

from weightflow.contracts.base import SUBJECT_PREFIX
from weightflow.shared.settings import Settings

PUBLISH_ATTEMPTS = 6
RUNS_PREFIX = "wfruns"


def runs_stream_name(settings: Settings) -> str:
    return f"{settings.stream}_RUNS"


def run_subject(run_id: UUID | str) -> str:
    return f"{RUNS_PREFIX}.{run_id}"


def stream_for(subject: str, settings: Settings) -> str:
    return runs_stream_name(settings) if subject.startswith(f"{RUNS_PREFIX}.") else settings.stream


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """Both streams with `stream_replicas` copies (consumers inherit it): 3 on a three-node cluster."""
    replicas = settings.stream_replicas
    return [
        StreamConfig(name=settings.stream, subjects=[f"{SUBJECT_PREFIX}.>"],
                     duplicate_window=settings.duplicate_window_s, num_replicas=replicas),
        StreamConfig(name=runs_stream_name(settings), subjects=[f"{RUNS_PREFIX}.>"], max_msgs_per_subject=1,
                     allow_direct=True, duplicate_window=settings.duplicate_window_s, num_replicas=replicas),
    ]


class StreamSetupError(RuntimeError):
    """nats-server refused to create or scale a stream; the message says which setting to change."""


async def ensure_streams(js: Any, settings: Settings) -> None:
    """Create the streams if missing (idempotent; safe from any process), and raise an existing stream's replicas
    to `stream_replicas`, never lower them: a process started without the setting must not shrink a cluster's
    copies (`weightflow doctor` reports a stream with fewer replicas than the setting)."""
    for config in stream_configs(settings):
        replicas = config.num_replicas or 1
        try:
            try:
                info = await js.stream_info(config.name)
            except NotFoundError:
                await js.add_stream(config)
                continue
            if (info.config.num_replicas or 1) < replicas:
                await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
        except APIError as exc:
            if replicas == 1:
                raise
            raise StreamSetupError(
                f"nats-server refused stream {config.name} with {replicas} replicas ({exc.description}): "
                f"WEIGHTFLOW_STREAM_REPLICAS={replicas} needs a JetStream cluster of at least {replicas} "
                f"nodes (use 1 for a single nats-server)") from exc


async def publish_with_retry(publish: Any, subject: str, payload: bytes, msg_id: str) -> None:
    """JetStream publish with the event id as Nats-Msg-Id, retried with the same id on failure.

    A timed-out publish may have been stored; re-sending the same id lets the server drop the copy.
    `publish(subject, payload, headers)` is the transport's own (faststream broker or nats-py).
    """
    delay = 0.2
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            await publish(subject, payload, {"Nats-Msg-Id": msg_id})
            return
        except Exception as exc:
            if attempt == PUBLISH_ATTEMPTS - 1 or not transient_publish_error(exc):
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def transient_publish_error(exc: BaseException) -> bool:
    """Worth retrying: timeouts, lost connections, a server that is (re)starting. Not: a payload too big
    for the server, a permissions violation, a subject no stream captures."""
    text = f"{type(exc).__name__}: {exc}".lower()
    permanent = ("maxpayload", "max_payload", "maximum payload", "permissions violation", "no stream matches",
                 "message size exceeds")
    return not any(p in text for p in permanent)
