"""Artifacts in a JetStream Object Store bucket: how processes that share no disk share artifacts.

`shared.artifacts.ArtifactStore` keeps its filesystem store as a local cache and, given this backend, writes
every object through to the bucket and fills a miss from it. An object's name in the bucket is its sha256 (a
quarantined payload's is `quarantine/<sha256>`); the store checks what arrives against that name, and sniffs it,
before anything reads it: the bucket is trusted no more than any other input.

Why it looks like this:

* The store is synchronous and called from handler threads, the CLI and `weightflow serve`; nats-py is async.
  Each backend owns one event loop on one daemon thread and one NATS connection, and every store of a process
  shares one backend per bucket (`for_settings`). Callers block on `run_coroutine_threadsafe`; the work never runs
  on a caller's own loop, so a call made from inside a service's event loop waits but cannot deadlock it.
* The bucket's layout is the Object Store's (stream `OBJ_<bucket>`, chunks on `$O.<bucket>.C.<nuid>`, the
  object's JSON meta on `$O.<bucket>.M.<base64url(name)>` with a `SHA-256=` digest), so `nats object get` and
  nats-py's `ObjectStore` read what we write. The chunk and meta I/O is written here, not taken from nats-py 2.16:
  - its `get` pushes the chunks through an ordered push consumer whose pending buffer may grow to the subscription's
    limits (256 MiB) when the disk is slower than the network, and waits forever for a chunk that never comes;
    here each chunk is one direct get (the next message on the object's chunk subject) written to the file before
    the next is asked for: one chunk in memory, any replica answers (reads go on while the stream elects a
    leader), every request has a deadline.
  - its `put` publishes each chunk once and, on any error, purges what it wrote, even after a meta write whose ack
    was only late (leaving a meta with no chunks); here each chunk carries a `Nats-Msg-Id` and is retried until
    acknowledged (JetStream drops the copy of one that was stored), so a leader election mid-upload costs a retry,
    not the upload, and the meta is written last, so nobody reads half an object.
* Every request retries what a cluster does in passing (an election, a dead node, a replica a chunk has not reached
  yet) until `stall_s` pass without progress, then fails naming the object, the bucket and what to check.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import nats
import nats.errors
from nats.js import api
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError, ServiceUnavailableError

from weightflow.shared.artifacts import ArtifactNotFoundError, IntegrityError

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

    from weightflow.shared.settings import Settings

log = logging.getLogger("weightflow.artifacts")

T = TypeVar("T")

CHUNK_SIZE = 128 * 1024  # the Object Store's default chunk: well under NATS's 1 MB max_payload
_NAME_RE = re.compile(r"(?:quarantine/)?([0-9a-f]{64})")
# What a cluster does in passing: no answer (a node died, an election), a JetStream API that is briefly unavailable.
TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError,
    nats.errors.NoServersError, ServiceUnavailableError, ConnectionError,
)


class ArtifactRemoteError(ConnectionError):
    """The bucket did not answer (or kept refusing) for `stall_s`: NATS unreachable or the cluster without a quorum."""


class _ChunkMissing(Exception):
    """A chunk the meta promises is not (yet) on the replica that answered."""


_RETRIED: tuple[type[BaseException], ...] = (*TRANSIENT, _ChunkMissing)
_PURGE_FAILED: tuple[type[BaseException], ...] = (*TRANSIENT, APIError)


def _digest_field(sha256_hex: str) -> str:
    """The Object Store's digest notation for a sha256: `SHA-256=<base64url of the 32 bytes>`."""
    return "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(sha256_hex)).decode()


def _name_digest(name: str) -> str:
    match = _NAME_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not an artifact name (a sha256, or quarantine/<sha256>)")
    return match.group(1)


def _meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def _chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


async def _quiet(exc: Exception) -> None:
    """nats-py reports each failed (re)connect here; the request that needed it says what failed."""
    log.debug("artifact store NATS connection: %r", exc)


class NatsObjects:
    """A JetStream Object Store bucket as `shared.artifacts.RemoteObjects`; see the module docstring."""

    def __init__(self, servers: list[str], bucket: str, *, replicas: int = 1, create: bool = True,
                 request_timeout_s: float = 10.0, stall_s: float = 120.0, chunk_size: int = CHUNK_SIZE,
                 inbox_prefix: str = "_INBOX") -> None:
        if not servers:
            raise ValueError("no NATS server for the artifact bucket: set WEIGHTFLOW_NATS_URL")
        self.servers, self.bucket, self.replicas, self.create = servers, bucket, replicas, create
        # Where JetStream's answers come back: a service's NATS user may subscribe only to its own inbox
        # (`Service.inbox_prefix()`, shared.nats_auth), so its requests must name replies there.
        self.inbox_prefix = inbox_prefix
        self.request_timeout_s, self.stall_s, self.chunk_size = request_timeout_s, stall_s, chunk_size
        self.stream = f"OBJ_{bucket}"
        self.where = f"JetStream Object Store bucket {bucket}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"weightflow-artifacts-{bucket}",
                                        daemon=True)
        self._thread.start()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._opening: asyncio.Lock | None = None

    # -- RemoteObjects (synchronous, any thread but the backend's own) -----------------------------------------

    def has(self, name: str) -> bool:
        """True when the bucket holds `name` whole under its own digest."""
        _name_digest(name)
        return self._call(self._has(name))

    def put(self, name: str, path: Path) -> None:
        """Stream the file at `path` into the bucket as `name` unless it is there intact already."""
        digest = _name_digest(name)
        self._call(self._put(name, digest, Path(path)))

    def get(self, name: str, dest: Path) -> str:
        """Stream `name` into the file `dest` (created or truncated); return the sha256 of what was written.

        Raises ArtifactNotFoundError when the bucket has no such object, IntegrityError when its meta names other
        content; the caller compares the returned digest with the name."""
        digest = _name_digest(name)
        return self._call(self._get(name, digest, Path(dest)))

    def close(self) -> None:
        """Close the connection and stop the loop thread (idempotent)."""
        if self._loop.is_closed():
            return

        async def shut() -> None:
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=5)
        except Exception:  # closing at exit: nothing left to tell
            log.debug("closing the artifact store's NATS connection failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("the artifact store was called from its own NATS thread")
        # Every coroutine bounds itself (deadlines per request, stall_s without progress): no timeout needed here.
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- on the backend's loop ---------------------------------------------------------------------------------

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds or fails for good; transient failures retry until stall_s pass."""
        deadline = time.monotonic() + self.stall_s
        delay = 0.1
        while True:
            try:
                return await attempt()
            except ArtifactRemoteError:
                raise
            except _RETRIED as exc:
                if time.monotonic() + delay > deadline:
                    raise ArtifactRemoteError(
                        f"{what}: {self.where} gave no answer for {self.stall_s:.0f} s (last: {exc!r}); check that "
                        f"NATS is reachable at WEIGHTFLOW_NATS_URL and that a majority of the cluster's nodes are up"
                    ) from exc
                log.debug("%s: %r; retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _context(self) -> JetStreamContext:
        """The connection and the bucket, opened (and the bucket created, when allowed) on first use."""
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._js is None:
                if self._nc is None:
                    # Bounded: with reconnects forever, nats-py's first connect would also wait forever.
                    try:
                        self._nc = await asyncio.wait_for(nats.connect(
                            self.servers, name="weightflow-artifacts", max_reconnect_attempts=-1,
                            reconnect_time_wait=1, connect_timeout=min(5.0, self.request_timeout_s), error_cb=_quiet,
                            inbox_prefix=self.inbox_prefix),
                            timeout=self.request_timeout_s)
                    except TRANSIENT as exc:
                        raise ArtifactRemoteError(
                            f"no NATS server answered within {self.request_timeout_s:.0f} s for {self.where} "
                            f"({len(self.servers)} URL(s) in WEIGHTFLOW_NATS_URL): is it right, is NATS up?") from exc
                js = self._nc.jetstream(timeout=self.request_timeout_s)
                try:
                    await js.object_store(self.bucket)
                except BucketNotFoundError:
                    if not self.create:
                        raise ArtifactRemoteError(
                            f"{self.where} does not exist and this process may not create it "
                            f"(WEIGHTFLOW_DECLARE_STREAM=false): create it as the admin user, e.g. with "
                            f"`nats object add {self.bucket} --replicas {self.replicas}`") from None
                    await js.create_object_store(
                        self.bucket, replicas=self.replicas, storage=api.StorageType.FILE,
                        description="weightflow artifacts, named by sha256")
                self._js = js
            return self._js

    async def _info(self, name: str) -> api.ObjectInfo | None:
        """The object's meta as the stream's leader has it (None when absent or deleted)."""
        js = await self._context()
        try:
            msg = await js.get_last_msg(self.stream, _meta_subject(self.bucket, name))
        except NotFoundError:
            return None
        info = api.ObjectInfo.from_response(json.loads(msg.data or b"{}"))
        return None if info.deleted else info

    async def _has(self, name: str) -> bool:
        info = await self._retrying(f"look up {name}", lambda: self._info(name))
        return info is not None and info.digest == _digest_field(_name_digest(name))

    async def _intact(self, info: api.ObjectInfo, digest: str, size: int) -> bool:
        """The meta names this content and its first chunk is stored (a meta whose chunks were purged is not)."""
        if info.digest != _digest_field(digest) or info.size != size or not info.nuid:
            return False
        if size == 0:
            return True
        js = await self._context()
        try:
            await js.get_msg(self.stream, seq=1, subject=_chunk_subject(self.bucket, info.nuid), next=True)
        except NotFoundError:
            return False
        return True

    async def _put(self, name: str, digest: str, path: Path) -> None:
        size = path.stat().st_size
        existing = await self._retrying(f"look up {name}", lambda: self._info(name))
        if existing is not None:
            found = existing
            if await self._retrying(f"check {name}", lambda: self._intact(found, digest, size)):
                return
        js = await self._context()
        assert self._nc is not None
        nuid = self._nc._nuid.next().decode()  # the same id generator nats-py's own put uses
        subject = _chunk_subject(self.bucket, nuid)
        h = hashlib.sha256()
        total = chunks = 0
        with open(path, "rb") as f:
            while chunk := f.read(self.chunk_size):  # blocks only this backend's own loop, briefly
                h.update(chunk)
                msg_id = f"{nuid}.{chunks}"

                async def publish(data: bytes = chunk, msg_id: str = msg_id) -> None:
                    await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})

                await self._retrying(f"store chunk {chunks} of {name}", publish)
                total += len(chunk)
                chunks += 1
        actual = h.hexdigest()
        if actual != digest or total != size:
            raise IntegrityError(f"{path} changed while it was stored as {name} (sha256 {actual}, {total} bytes); "
                                 f"store the original file again")
        info = api.ObjectInfo(name=name, bucket=self.bucket, nuid=nuid, size=total, chunks=chunks,
                              mtime=datetime.now(UTC).isoformat(), digest=_digest_field(digest),
                              options=api.ObjectMetaOptions(max_chunk_size=self.chunk_size))
        meta = json.dumps(info.as_dict()).encode()

        async def publish_meta() -> None:
            await js.publish(_meta_subject(self.bucket, name), meta,
                             headers={api.Header.ROLLUP: "sub", "Nats-Msg-Id": f"{nuid}.meta"})

        await self._retrying(f"store the meta of {name}", publish_meta)
        if existing is not None and existing.nuid and existing.nuid != nuid:  # a broken copy: its chunks are garbage
            try:
                await js.purge_stream(self.stream, subject=_chunk_subject(self.bucket, existing.nuid))
            except _PURGE_FAILED:
                log.warning("left the chunks of a replaced copy of %s in %s", name, self.where)

    async def _get(self, name: str, digest: str, dest: Path) -> str:
        info = await self._retrying(f"look up {name}", lambda: self._info(name))
        if info is None:
            raise ArtifactNotFoundError(
                f"no artifact {name} in {self.where} (stream {self.stream}): it was never stored there; a process "
                f"with WEIGHTFLOW_ARTIFACT_BACKEND=filesystem may hold it, store it again from there")
        if info.digest != _digest_field(digest) or not info.nuid:
            raise IntegrityError(f"artifact {name} in {self.where} names other content (digest {info.digest}); "
                                 f"store the original file again (put_file) to replace it")
        js = await self._context()
        subject = _chunk_subject(self.bucket, info.nuid)
        size = info.size or 0
        h = hashlib.sha256()
        written, seq = 0, 0
        with open(dest, "wb") as f:
            while written < size:
                async def next_chunk(after: int = seq) -> api.RawStreamMsg:
                    try:  # any replica answers a direct get; one that lacks the chunk yet says 404: ask again
                        return await js.get_msg(self.stream, seq=after + 1, subject=subject, next=True, direct=True)
                    except NotFoundError:
                        raise _ChunkMissing(f"chunk after sequence {after} of {name}") from None

                msg = await self._retrying(f"read {name} ({written} of {size} bytes)", next_chunk)
                data = msg.data or b""
                if written + len(data) > size or msg.seq is None or msg.seq <= seq:
                    raise IntegrityError(f"artifact {name} in {self.where} has more data than its meta says "
                                         f"({size} bytes); store the original file again (put_file) to replace it")
                f.write(data)
                h.update(data)
                written += len(data)
                seq = msg.seq
            f.flush()
            os.fsync(f.fileno())
        return h.hexdigest()


_SHARED: dict[tuple[tuple[str, ...], str, int, bool, str], NatsObjects] = {}
_SHARED_LOCK = threading.Lock()


def for_settings(settings: Settings, inbox_prefix: str = "_INBOX") -> NatsObjects:
    """The process's backend for the settings' NATS servers and bucket (one connection, one thread per bucket);
    a service passes its own inbox prefix, the only one its NATS user may read replies on.

    The bucket keeps `artifact_replicas` copies, or as many as the streams (`stream_replicas`); it is created on
    first use unless `declare_stream` is false (then the operator creates it)."""
    servers = tuple(u.strip() for u in settings.resolved_nats_url().split(",") if u.strip())
    replicas = settings.artifact_replicas or settings.stream_replicas
    key = (servers, settings.artifact_bucket, replicas, settings.declare_stream, inbox_prefix)
    with _SHARED_LOCK:
        backend = _SHARED.get(key)
        if backend is None or backend._loop.is_closed():
            backend = _SHARED[key] = NatsObjects(list(servers), settings.artifact_bucket, replicas=replicas,
                                                 create=settings.declare_stream, inbox_prefix=inbox_prefix)
        return backend


@atexit.register
def _close_all() -> None:
    with _SHARED_LOCK:
        for backend in _SHARED.values():
            backend.close()
        _SHARED.clear()
