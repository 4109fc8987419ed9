"""Artifacts without a shared disk: the JetStream Object Store backend, and the six services with six homes.

The first tests drive `ArtifactStore` with a `NatsObjects` remote on a real nats-server: two stores with two
folders share nothing but the bucket, the bucket's content is checked like any input, memory stays flat. The last
test runs the whole workflow with each service in a home of its own (no file shared; one database) against a
three-node cluster whose artifact-stream leader is killed mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.js.api import ObjectMeta
from pydantic import ValidationError

from weightflow.client import Client, RunTracker
from weightflow.contracts.base import Event
from weightflow.contracts.fitting import FitCompleted
from weightflow.contracts.registry import Manifest, ModelRegistered
from weightflow.contracts.topology import SERVICES
from weightflow.shared.artifacts import ArtifactNotFoundError, ArtifactStore, IntegrityError, is_digest, open_store
from weightflow.shared.nats_objects import NatsObjects, for_settings
from weightflow.shared.natsd import EmbeddedCluster, EmbeddedNats
from weightflow.shared.safetensors_check import UnsafeArtifactError
from weightflow.shared.settings import Settings
from weightflow.stack import Stack
from weightflow.submission import prepare

from ..conftest import EXAMPLE_DIR, LiveStack, postgres_database
from ..exactly_once import assert_exactly_once
from .test_crash_safety import EXPECTED, EXPECTED_ROWS

T = TypeVar("T")

BUCKET = "WF_TEST"


def safetensors_bytes(size: int, seed: int = 0) -> bytes:
    """A valid safetensors file of one U8 tensor holding `size` pseudo-random bytes."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB, repeated
    data = (block * (size // len(block) + 1))[:size]
    return struct.pack("<Q", len(header)) + header + data


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def remote(nats_server: EmbeddedNats) -> Iterator[NatsObjects]:
    backend = NatsObjects([nats_server.url], BUCKET, request_timeout_s=2.0, stall_s=20.0)
    try:
        yield backend
    finally:
        backend.close()


def bucket_object(url: str, name: str) -> bytes:
    """What nats-py's own Object Store client reads: the layout is the standard one."""
    async def go() -> bytes:
        nc = await nats.connect(url)
        try:
            result = await (await nc.jetstream().object_store(BUCKET)).get(name)
            return result.data or b""
        finally:
            await nc.close()

    return asyncio.run(go())


def plant(url: str, name: str, data: bytes) -> None:
    """Write into the bucket behind the store's back, as another client (or an attacker with access) could."""
    async def go() -> None:
        nc = await nats.connect(url)
        try:
            await (await nc.jetstream().object_store(BUCKET)).put(name, data, meta=ObjectMeta(name=name))
        finally:
            await nc.close()

    asyncio.run(go())


def test_two_stores_share_nothing_but_the_bucket(tmp_path: Path, nats_server: EmbeddedNats,
                                                 remote: NatsObjects) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(safetensors_bytes(3 << 20))
    (model / "config.json").write_text('{"hidden": 8}')
    (model / "sub" / "vocab.txt").write_text("a\nb\n")
    writer = ArtifactStore(tmp_path / "writer", remote=remote)
    tree = writer.put_tree(model)

    reader = ArtifactStore(tmp_path / "reader", remote=remote)
    assert files_under(reader.objects) == []
    assert reader.exists(tree) and not reader.exists("0" * 64)
    assert files_under(reader.objects) == [], "exists() asks the bucket, it does not download"
    built = reader.materialize_tree(tree)
    for name in ("model.safetensors", "config.json", "sub/vocab.txt"):
        assert (built / name).read_bytes() == (model / name).read_bytes()
    assert {p.name for p in files_under(reader.objects)} == {p.name for p in files_under(writer.objects)}
    assert not [p for p in files_under(reader.tmp)], "no download left behind"
    # The layout is JetStream's own Object Store: nats-py's client reads the same bytes by the same name.
    weights = reader.tree_files(tree)["model.safetensors"]
    assert bucket_object(nats_server.url, weights) == (model / "model.safetensors").read_bytes()
    # A second put of what the bucket holds sends nothing again (the object stays the one stored first).
    assert writer.put_file(model / "config.json") == reader.tree_files(tree)["config.json"]


def test_the_bucket_is_checked_like_any_input(tmp_path: Path, nats_server: EmbeddedNats,
                                              remote: NatsObjects) -> None:
    reader = ArtifactStore(tmp_path / "reader", remote=remote)
    missing = "ab" * 32
    with pytest.raises(ArtifactNotFoundError, match=f"no artifact {missing} in JetStream Object Store bucket {BUCKET}"):
        reader.path_of(missing)

    # A pickle stored under its own sha256 is a well-named object; it still never enters a store.
    evil = pickle.dumps({"x": 1}, protocol=4)
    evil_digest = hashlib.sha256(evil).hexdigest()
    plant(nats_server.url, evil_digest, evil)
    with pytest.raises(UnsafeArtifactError, match="pickle"):
        reader.path_of(evil_digest)

    # Other content under a digest's name: refused by the bucket's own digest, before a byte is downloaded.
    good = b'{"good": true}'
    good_digest = hashlib.sha256(good).hexdigest()
    plant(nats_server.url, good_digest, b'{"good": false}')
    with pytest.raises(IntegrityError, match=f"{good_digest} in JetStream Object Store bucket {BUCKET}"):
        reader.read_bytes(good_digest)
    assert not reader.exists(good_digest), "a misnamed object does not count as present"
    assert files_under(reader.objects) == [] and files_under(reader.tmp) == []
    # Storing the real content heals the bucket for every reader.
    ArtifactStore(tmp_path / "writer", remote=remote).put_bytes(good)
    assert reader.read_bytes(good_digest) == good
    with pytest.raises(ValueError, match="not an artifact digest"):
        reader.path_of("../" + "0" * 61)


def test_dead_letter_payloads_reach_another_host_through_the_bucket(tmp_path: Path, remote: NatsObjects) -> None:
    payload = b"\x80\x04 anything at all, never loaded"
    digest = ArtifactStore(tmp_path / "service", remote=remote).quarantine(payload)
    operator = ArtifactStore(tmp_path / "operator", remote=remote)
    assert operator.read_quarantined(digest) == payload
    assert files_under(operator.objects) == [], "a quarantined payload is not an object"
    with pytest.raises(ArtifactNotFoundError):
        operator.path_of(digest)


def test_put_and_get_stream_with_flat_memory(tmp_path: Path, remote: NatsObjects) -> None:
    """32 MiB through the bucket and back: Python never holds more than a few chunks (128 KiB each)."""
    src = tmp_path / "big.safetensors"
    src.write_bytes(safetensors_bytes(32 << 20, seed=1))
    writer = ArtifactStore(tmp_path / "writer", remote=remote)
    reader = ArtifactStore(tmp_path / "reader", remote=remote)
    tracemalloc.start()
    try:
        digest = writer.put_file(src)
        tracemalloc.reset_peak()
        path = reader.open_verified(digest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size == src.stat().st_size
    assert peak < 4 << 20, f"a 32 MiB read peaked at {peak >> 10} KiB of Python memory"


class Counting:
    """A remote that counts downloads."""

    def __init__(self, inner: NatsObjects) -> None:
        self.inner, self.where, self.gets = inner, inner.where, list[str]()

    def has(self, name: str) -> bool:
        return self.inner.has(name)

    def put(self, name: str, path: Path) -> None:
        self.inner.put(name, path)

    def get(self, name: str, dest: Path) -> str:
        self.gets.append(name)
        return self.inner.get(name, dest)


def test_concurrent_readers_in_one_process_download_once(tmp_path: Path, remote: NatsObjects) -> None:
    src = tmp_path / "w.safetensors"
    src.write_bytes(safetensors_bytes(4 << 20, seed=2))
    digest = ArtifactStore(tmp_path / "writer", remote=remote).put_file(src)
    counting = Counting(remote)
    reader = ArtifactStore(tmp_path / "reader", remote=counting)
    threads = [threading.Thread(target=reader.open_verified, args=(digest,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counting.gets == [digest]


def test_open_store_follows_the_settings(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    plain = open_store(Settings(home=tmp_path / "a"))
    assert plain.remote is None and plain.root == (tmp_path / "a" / "artifacts").resolve()
    settings = Settings(home=tmp_path / "b", nats_url=nats_server.url, artifact_backend="nats",
                        artifact_bucket=BUCKET)
    store = open_store(settings)
    assert store.remote is not None and BUCKET in store.remote.where
    assert open_store(settings).remote is store.remote, "one connection per process and bucket"
    digest = store.put_bytes(b"shared")
    assert ArtifactStore(tmp_path / "c", remote=store.remote).read_bytes(digest) == b"shared"
    for_settings(settings).close()  # the server stops with the test: no connection left retrying it
    with pytest.raises(ValidationError, match="artifact_bucket"):
        Settings(artifact_bucket="no spaces")


# -- the whole workflow, six homes, one cluster ---------------------------------------------------------------------

ARTIFACT_STREAM = "OBJ_WF_ARTIFACTS"


def ask(settings: Settings, coro_fn: Callable[[Any], Awaitable[T]]) -> T | None:
    """One JetStream question to whichever node answers; None while none does (an election, a node down)."""
    async def go() -> T:
        nc = await nats.connect(settings.resolved_nats_url().split(","), connect_timeout=1, max_reconnect_attempts=1,
                                error_cb=quiet)
        try:
            return await coro_fn(nc.jetstream(timeout=2.0))
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except Exception:
        return None


async def quiet(exc: Exception) -> None:
    """A node that is down refuses connections: expected here."""


def stream_leader(settings: Settings, stream: str) -> tuple[str | None, int]:
    """The stream's leader as JetStream reports it (None while it has none), and its replicas."""
    async def leader(js: Any) -> tuple[str | None, int]:
        info = await js.stream_info(stream)
        return (info.cluster.leader if info.cluster else None), info.config.num_replicas

    return ask(settings, leader) or (None, 0)


def bucket_names(settings: Settings) -> list[str]:
    async def names(js: Any) -> list[str]:
        return [info.name for info in await (await js.object_store("WF_ARTIFACTS")).list(ignore_deletes=True)]

    found = ask(settings, names)
    assert found is not None, "the bucket did not answer"
    return found


def history(settings: Settings) -> list[Event] | None:
    async def go() -> list[Event]:
        async with Client(settings) as client:
            return await client.history()

    try:
        return asyncio.run(go())
    except Exception:  # the node this client reached just died: ask again
        return None


def publish(settings: Settings, event: Event) -> None:
    async def go() -> None:
        async with Client(settings) as client:
            await client.publish(event)

    asyncio.run(go())


def logs(homes: dict[str, Path]) -> str:
    out = []
    for name, home in homes.items():
        for log in sorted((home / "logs").glob("*.log")):
            out.append(f"===== {name}: {log.name}\n" + log.read_text(errors="replace")[-3000:])
    return "\n".join(out)


# Services SIGKILLed once each mid-run, at a crash point (shared.bus.lifecycle.crash_point): inside the fit's
# transaction, and after tuning's commit before its ack (its adapter already in the bucket).
KILLS = {"fitting": "mid_transaction", "tuning": "after_commit"}


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.postgres
@pytest.mark.timeout(1200)  # 4-5 min on a busy 2-core machine: a whole run with LoRA, a node and two services killed
def test_six_services_in_six_homes_share_nothing_but_the_cluster_and_the_database(tmp_path: Path) -> None:
    """The example run (LoRA tuning and the canary included) with each service in a folder of its own, its state in
    PostgreSQL, artifacts in a 3-replica bucket whose stream leader is SIGKILLed once tuning has started, and two
    services SIGKILLed mid-handling (restarted by their supervisor, as `weightflow up` does): the run completes with
    every event and effect exactly once, each folder holds only its own cache of the bucket, no pinned file names a
    host path, and a CLI with yet another home verifies the release from the bucket."""
    with postgres_database() as database_url:
        shared_nothing_run(tmp_path, database_url)


def shared_nothing_run(tmp_path: Path, database_url: str) -> None:
    homes = {name: tmp_path / "homes" / name for name in (*SERVICES, "submitter", "verifier")}
    env = {"WEIGHTFLOW_ARTIFACT_BACKEND": "nats", "WEIGHTFLOW_DATABASE_URL": database_url,
           "WEIGHTFLOW_STREAM_REPLICAS": "3", "WEIGHTFLOW_CANARY_INTERVAL_S": "3600", "WEIGHTFLOW_ACK_WAIT_S": "20",
           "WEIGHTFLOW_TRACE_FILE": "false"}
    started = time.monotonic()
    with EmbeddedCluster(tmp_path / "nats") as cluster:
        def settings_of(home: Path) -> Settings:
            return Settings(home=home, nats_url=cluster.url, database_url=database_url, artifact_backend="nats",
                            stream_replicas=3, trace_file=False)

        stacks = [Stack(settings_of(homes[name]), services=(name,),
                        env=env | ({"WEIGHTFLOW_CRASH_POINTS": KILLS[name]} if name in KILLS else {})).start()
                  for name in SERVICES]
        killed: list[str] = []
        supervised = contextlib.ExitStack()
        for stack in stacks:
            supervised.enter_context(stack.supervising(interval=0.3))
        try:
            submitter = settings_of(homes["submitter"])
            event = prepare(EXAMPLE_DIR / "requirements.yaml", open_store(submitter)).event
            publish(submitter, event)
            deadline = time.monotonic() + 900
            while True:
                events = history(submitter) or []
                tracker = RunTracker({event.run_id})
                for e in events:
                    tracker.feed(e)
                if not killed and any(isinstance(e, FitCompleted) for e in tracker.events):
                    leader, replicas = stream_leader(submitter, ARTIFACT_STREAM)
                    assert leader is not None and leader in cluster.nodes, f"no leader to kill: {leader}"
                    assert replicas == 3, "the bucket is replicated like the streams"
                    cluster.kill(leader)  # tuning fetches its base and stores its adapter with one node gone
                    killed.append(leader)
                if tracker.outcome is not None:
                    break
                assert time.monotonic() < deadline, f"no outcome within 900 s\n{logs(homes)}"
                time.sleep(0.5)
            kinds = [e.type_name() for e in tracker.events]
            assert tracker.outcome == "succeeded", f"{kinds}\n{logs(homes)}"
            assert killed, "the run ended before the bucket's leader could be killed"
            for kind in ("tuning.adapter_trained", "tuning.gated", "registry.model_registered",
                         "monitoring.canary_passed"):
                assert kind in kinds, kinds
            new_leader, _ = stream_leader(submitter, ARTIFACT_STREAM)
            assert new_leader is not None and new_leader != killed[0]
            time.sleep(2.0)  # a late duplicate would land now
            supervised.close()
            fired = sorted(p.name for name in KILLS for p in (homes[name] / "crash-points").iterdir())
            assert fired == sorted(f"{name}.{point}" for name, point in KILLS.items()), fired
            restarts = {name: sum(stack.restarts.values()) for name, stack in zip(SERVICES, stacks, strict=True)}
            assert restarts == {name: int(name in KILLS) for name in SERVICES}, restarts
            assert_exactly_once(LiveStack(stacks[SERVICES.index("registry")]), history(submitter) or [],
                                event.run_id, expected=EXPECTED, rows=EXPECTED_ROWS)
            registered = next(e for e in tracker.events if isinstance(e, ModelRegistered))
            stored = set(bucket_names(submitter))
        finally:
            supervised.close()
            for stack in stacks:
                stack.stop()
        run_s = time.monotonic() - started

        # Each home is a cache of the bucket and nothing else: its objects are all in the bucket, no file in it is
        # a link out of it or shares an inode with another home's.
        inodes: dict[tuple[int, int], str] = {}
        for name in SERVICES:
            home = homes[name]
            objects = [p for p in (home / "artifacts" / "objects").rglob("*") if p.is_file()]
            assert objects, f"{name} used no artifact"
            assert {p.parent.name + p.name for p in objects} <= stored, f"{name} holds objects the bucket lacks"
            for path in home.rglob("*"):
                assert not path.is_symlink() and path.resolve().is_relative_to(home.resolve()), path
                if path.is_file():
                    key = (path.stat().st_dev, path.stat().st_ino)
                    assert inodes.setdefault(key, name) == name, f"{path} is also a file of {inodes[key]}'s home"
        assert not any((homes[name] / "weightflow.db").exists() for name in SERVICES), "the state is in PostgreSQL"
        auditor = open_store(settings_of(tmp_path / "auditor"))
        manifest = Manifest.model_validate(auditor.read_json(registered.manifest_id))
        assert manifest.adapter is not None, "the release carries the LoRA adapter"
        tuning_objects = {p.parent.name + p.name for p in (homes["tuning"] / "artifacts" / "objects").rglob("*")}
        assert set(manifest.adapter.files.values()) <= tuning_objects, "the adapter came from tuning's home"

        # No object in the bucket (manifests, runbooks, tree indexes, rendered requirements, weights) names a path
        # of this host: a release moves between hosts unchanged.
        for digest in sorted(n for n in stored if is_digest(n)):
            data = auditor.path_of(digest).read_bytes()
            assert str(tmp_path).encode() not in data and b"/homes/" not in data, f"{digest} holds a host path"

        # A CLI on yet another host verifies the release from the bucket alone.
        verify = subprocess.run(
            [sys.executable, "-m", "weightflow.cli", "registry", "verify", registered.manifest_id],
            env={**os.environ, **env, "WEIGHTFLOW_HOME": str(homes["verifier"]), "WEIGHTFLOW_NATS_URL": cluster.url,
                 "COLUMNS": "200"},
            capture_output=True, text=True, timeout=300, check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        verified = [line for line in verify.stdout.splitlines() if line.startswith("ok")]
        assert len(verified) == len(manifest.checksums()), verify.stdout
        print(f"shared-nothing run: {run_s:.0f} s; killed {killed[0]} (leader of {ARTIFACT_STREAM}), "
              f"new leader {new_leader}; {len(stored)} objects in the bucket")
