"""The model a server answers with: the deployment's live manifest, swapped when the registry says so.

The server follows `registry.deployment_promoted` (a rollback promotes too) for its deployment and
loads the new manifest beside the old one, verified file by file, then swaps the reference: a batch
already running finishes on the model it started with, the next batch runs on the new one, so no
request is dropped. A manifest that fails to load (a checksum mismatch) is refused and the current
model keeps serving; the error shows at /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy

from weightflow.client import Client
from weightflow.contracts.base import parse_event
from weightflow.contracts.registry import DeploymentPromoted, Manifest
from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.artifacts import ArtifactStore, open_store
from weightflow.shared.modeling.protocols import LoadedModel, Task
from weightflow.shared.nats_auth import SERVE_INBOX_PREFIX
from weightflow.shared.settings import Settings

log = logging.getLogger("weightflow.serve")


@dataclass(frozen=True)
class ServedModel:
    deployment: str
    manifest_id: str
    manifest: Manifest
    task: Task
    loaded: LoadedModel  # used by the batch thread only
    front: LoadedModel  # the same model with its own tokenizer, for request checks on the event loop

    @property
    def spec(self) -> TaskSpec:
        return self.manifest.requirements.task

    @property
    def context_tokens(self) -> int:
        """Prompt + completion tokens per request that the deployment's memory budget planned for."""
        return self.task.serving_context(self.spec)


def load_served(store: ArtifactStore, deployment: str, manifest_id: str, device: str) -> ServedModel:
    from weightflow.shared.modeling.stored import load_deployment, read_manifest, task_of

    manifest = read_manifest(store, manifest_id)
    if manifest.deployment != deployment:
        raise ValueError(f"manifest {manifest_id[:12]} belongs to deployment {manifest.deployment!r}, "
                         f"not {deployment!r}")
    loaded = load_deployment(store, manifest, device)
    # Fast tokenizers are not safe to call from two threads at once: request checks get their own copy.
    front = dataclasses.replace(loaded, tokenizer=copy.deepcopy(loaded.tokenizer))
    return ServedModel(deployment, manifest_id, manifest, task_of(manifest.requirements.task), loaded, front)


class LiveDeployment:
    def __init__(self, settings: Settings, deployment: str, *, pinned: str | None = None) -> None:
        self.settings, self.deployment, self.pinned = settings, deployment, pinned
        # Its artifact reads answered on serve's own inbox: under `weightflow nats-config`'s accounts the `serve`
        # user may read the bucket and subscribe there only (shared.nats_auth).
        self.store = open_store(settings, SERVE_INBOX_PREFIX)
        self.current: ServedModel | None = None
        self.following = False
        self.last_error: str | None = None
        self.swaps = 0
        self._task: asyncio.Task[None] | None = None
        self._seen = datetime.min.replace(tzinfo=UTC)  # the newest promotion applied
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the live (or pinned) manifest; raise with what to do when there is none."""
        if self.pinned:
            await self.switch(self.pinned, initial=True)
            return
        async with Client(self.settings) as client:
            promoted = [e for e in await client.history() if isinstance(e, DeploymentPromoted)
                        and e.deployment == self.deployment]
        if not promoted:
            raise LookupError(f"deployment {self.deployment!r} has no promoted manifest; see `weightflow registry "
                              f"ls`, or serve one with --manifest")
        await self.switch(promoted[-1].manifest_id, initial=True)
        self._seen = promoted[-1].occurred_at
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def switch(self, manifest_id: str, *, initial: bool = False) -> None:
        async with self._lock:
            if self.current is not None and self.current.manifest_id == manifest_id:
                return
            try:
                served = await asyncio.to_thread(load_served, self.store, self.deployment, manifest_id,
                                                 self.settings.device)
            except Exception as exc:
                if initial:
                    raise
                self.last_error = f"refused manifest {manifest_id[:12]}: {type(exc).__name__}: {exc}"
                log.error("%s; still serving %s", self.last_error,
                          self.current.manifest_id[:12] if self.current else "nothing")
                return
            previous, self.current = self.current, served
            self.last_error = None
            if previous is not None:
                self.swaps += 1
                log.warning("%s: now serving %s (was %s)", self.deployment, manifest_id[:12],
                            previous.manifest_id[:12])
            else:
                log.info("%s: serving %s", self.deployment, manifest_id[:12])

    async def _follow(self) -> None:
        """Promotions of this deployment after the one loaded, across NATS outages (a reconnect resumes
        from the last one applied; older ones replayed by the overlap are skipped)."""
        while True:
            try:
                async with Client(self.settings) as client:
                    since = self._seen - timedelta(seconds=1)
                    sub = await client.js.subscribe(DeploymentPromoted.subject(), ordered_consumer=True,
                                                    config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                                                          opt_start_time=since))
                    self.following = True
                    while True:
                        try:
                            msg = await sub.next_msg(timeout=5)
                        except TimeoutError:
                            if not client.nc.is_connected and client.nc.is_closed:
                                raise ConnectionError("NATS connection closed") from None
                            continue
                        event = self._promotion(msg.data)
                        if event is not None and event.occurred_at > self._seen:
                            self._seen = event.occurred_at
                            await self.switch(event.manifest_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.following = False
                log.warning("%s: following promotions failed (%s); retrying in 2 s", self.deployment, exc)
                await asyncio.sleep(2)

    def _promotion(self, data: bytes) -> DeploymentPromoted | None:
        try:
            event: Any = parse_event(data)
        except ValueError as exc:
            log.warning("skipped an unreadable promotion event: %s", str(exc)[:200])
            return None
        if isinstance(event, DeploymentPromoted) and event.deployment == self.deployment:
            return event
        return None


async def announce_endpoint(settings: Settings, live: LiveDeployment, url: str, *, online: bool) -> None:
    """Tell monitoring this server is (or stopped being) where `live.deployment` is served. Serving goes
    on without it when the bus is down: the canary then loads its own copy, as before."""
    from uuid import uuid4

    from weightflow.contracts.monitoring import ServingEndpointAnnounced

    event = ServingEndpointAnnounced(run_id=uuid4(), deployment=live.deployment, url=url, online=online,
                                     manifest_id=live.current.manifest_id if live.current else None)
    try:
        async with Client(settings) as client:
            await client.publish(event)
        log.info("%s: announced %s as %s", live.deployment, url, "online" if online else "offline")
    except Exception as exc:  # the bus is optional for serving
        log.warning("%s: could not announce %s to monitoring (%s); the canary will not probe this server",
                    live.deployment, url, exc)
