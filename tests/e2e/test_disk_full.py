"""A disk that fills and frees, on real processes: the embedded stack's nats-server stores JetStream on a
small filesystem of its own (a tmpfs), which is filled while a service has work to announce, then freed.

nats-server 2.15 keeps a store write error (`no space left on device`) until it restarts, even after space
is freed; its clients only see publish timeouts. While full: `doctor` says the store is not writable,
`dlq ls` shows the dead letter the database holds, `status` says why the run waits. Once freed, the
stack's supervisor restarts its nats-server on the same port and store, the outbox relay publishes what
waited, and every event is on the stream exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import pytest
from sqlmodel import Session, select

from weightflow.client import Client
from weightflow.contracts.requirements import RequirementsAccepted, RequirementsSubmitted
from weightflow.contracts.workflow import DeadLettered
from weightflow.shared.db import DeadLetterRecord, OutboxRecord, make_engine
from weightflow.shared.natsd import parse_health, store_health
from weightflow.shared.settings import Settings
from weightflow.stack import NATS_KEY, NATS_RESTART_BACKOFF_S, STORE_RESTART_MIN_FREE_BYTES, Stack, restart_store
from weightflow.submission import prepare

from ..conftest import EXAMPLE_DIR, LiveStack

STORE_MB = 48


@contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` at `path` (root only: skipped with the reason where it cannot be mounted)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem for the store needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left; returns it (remove it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


async def use_up_the_last_page(settings: Settings) -> int:
    """A tmpfs hands out whole pages: with the filesystem full, the stream's block file may still have room in its
    last page, and a small message (a dead letter) still fits there or not by how long the earlier messages were
    (a longer example requirements file moved it). Small padding messages, on a subject no event has, take that
    room until the store refuses one; returns how many fitted."""
    async with Client(settings) as client:
        for n in range(1000):
            try:
                await client.js.publish("wf.padding.slack", b"\0" * 64, timeout=2)
            except Exception:  # the store's write error, or a timeout: the last page is used up
                return n
    raise AssertionError("1000 padding messages fitted on a full filesystem")


def cli(home: Path, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WEIGHTFLOW_HOME": str(home), "COLUMNS": str(columns)}
    env.pop("WEIGHTFLOW_NATS_URL", None)
    return subprocess.run([sys.executable, "-m", "weightflow.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, live: LiveStack) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s\n{live.logs()}")
        time.sleep(0.5)


def outbox(settings: Settings) -> list[OutboxRecord]:
    with Session(make_engine(settings.resolved_database_url())) as session:
        return list(session.exec(select(OutboxRecord)))


def dead_letter_rows(settings: Settings) -> list[DeadLetterRecord]:
    with Session(make_engine(settings.resolved_database_url())) as session:
        return list(session.exec(select(DeadLetterRecord)))


@pytest.mark.e2e
def test_a_full_store_is_reported_and_recovered_without_losing_an_event(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with small_filesystem(home / "nats", STORE_MB) as store_fs:
        stack = Stack(Settings(home=home), services=("requirements",), env={"WEIGHTFLOW_ACK_WAIT_S": "60"})
        live = LiveStack(stack.start())
        try:
            with stack.supervising(interval=0.3):
                scenario(live, store_fs)
        finally:
            stack.stop()


def scenario(live: LiveStack, store_fs: Path) -> None:
    home, settings = live.stack.home, live.settings
    first = prepare(EXAMPLE_DIR / "requirements.yaml", live.store).event
    assert live.run(first, timeout=120, done=lambda e: isinstance(e, RequirementsAccepted)).outcome == "succeeded"

    # The service has work queued (a rogue payload, then a run) when the store fills: it is stopped while
    # they are stored, and goes on once nothing can be written.
    service = live.stack.procs["requirements-0"]
    service.send_signal(signal.SIGSTOP)
    event = prepare(EXAMPLE_DIR / "requirements.yaml", live.store).event
    rogue_run = uuid4()
    try:
        rogue = json.dumps({"event_type": RequirementsSubmitted.type_name(), "run_id": str(rogue_run),
                            "event_id": str(uuid4()), "document": 5}).encode()

        async def publish_rogue() -> None:
            async with Client(settings) as client:
                await client.publish_raw(RequirementsSubmitted.subject(), rogue, "rogue")

        asyncio.run(publish_rogue())
        live.publish(event)
        filler = fill(store_fs)
        asyncio.run(use_up_the_last_page(settings))
    finally:
        service.send_signal(signal.SIGCONT)

    # Full: the service commits (its database is elsewhere), but nothing it announces can be stored.
    wait_until(lambda: len(dead_letter_rows(settings)) == 1 and any(
        r.published_at is None and r.subject == RequirementsAccepted.subject() for r in outbox(settings)),
        120, "the work committed with its announcements waiting", live)
    monitor = settings.resolved_nats_monitor_url()
    assert monitor is not None
    wait_until(lambda: bool(store_health(monitor).store_errors), 60, "nats-server reports the write error", live)
    assert "no space left on device" in store_health(monitor).store_errors[0]

    doctor = cli(home, "doctor")
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "JetStream store not writable" in doctor.stderr and "no space left" in doctor.stderr, doctor.stderr
    assert "ok   JetStream storage" not in doctor.stdout, doctor.stdout
    assert "in the database only" in doctor.stderr, doctor.stderr

    listed = cli(home, "dlq", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    (letter,) = json.loads(listed.stdout)
    assert letter["run_id"] == str(rogue_run) and letter["reason"] == "invalid" and letter["on_stream"] is False

    status = cli(home, "status", str(event.run_id))
    assert status.returncode == 0, status.stderr
    assert f"run {event.run_id}: in progress" in status.stdout, status.stdout
    assert "waiting:" in status.stdout and "requirements's outbox" in status.stdout, status.stdout
    assert "NATS store not writable" in status.stdout and "no space left" in status.stdout, status.stdout
    assert live.stack.restarts.get(NATS_KEY, 0) == 0, "no restart while the disk is still full"

    # Freed: the supervisor restarts its nats-server; what waited is published, each event once.
    filler.unlink()
    wait_until(lambda: all(r.published_at is not None for r in outbox(settings) if r.parked_at is None), 120,
               "every outbox row published after the space came back", live)
    assert live.stack.restarts.get(NATS_KEY, 0) >= 1
    assert not store_health(monitor).store_errors
    history = live.history()
    ids = Counter(str(e.event_id) for e in history)
    assert max(ids.values()) == 1, "an event was stored twice"
    published = [r for r in outbox(settings) if r.subject.startswith("wf.")]
    assert all(r.event_id in ids for r in published), "an outbox event is missing from the stream"
    accepted = Counter(e.run_id for e in history if isinstance(e, RequirementsAccepted))
    assert accepted == {first.run_id: 1, event.run_id: 1}, accepted
    assert [e.run_id for e in history if isinstance(e, DeadLettered)] == [rogue_run]

    doctor = cli(home, "doctor")
    assert "not writable" not in doctor.stderr and "ok   JetStream storage" in doctor.stdout, doctor.stdout
    listed = cli(home, "dlq", "ls", "--json")
    (letter,) = json.loads(listed.stdout)
    assert letter["on_stream"] is True
    status = cli(home, "status", str(event.run_id))
    assert "waiting:" not in status.stdout, status.stdout


def test_the_store_health_nats_server_reports_and_when_to_restart() -> None:
    """What nats-server 2.15.1 answered on /healthz?details=true after ENOSPC (recorded on a 16 MiB tmpfs), and
    the supervisor's decision: restart only with the error, space back, and no restart just before."""
    body = (b'{"status":"error","errors":[{"type":"STREAM","account":"$G","stream":"WF","error":"JetStream stream '
            b'\'$G \\u003e WF\' write error: write /js/jetstream/$G/streams/WF/msgs/1.blk: no space left on device"}]}')
    broken = parse_health(503, body)
    assert broken.reachable and not broken.ok
    assert broken.store_errors == ("JetStream stream '$G > WF' write error: write /js/jetstream/$G/streams/WF/msgs/"
                                   "1.blk: no space left on device",)
    assert parse_health(200, b'{"status":"ok"}').ok
    assert not parse_health(503, b'{"status":"unavailable","error":"JetStream stream is not current"}').store_errors
    assert restart_store(broken, STORE_RESTART_MIN_FREE_BYTES, NATS_RESTART_BACKOFF_S)
    assert not restart_store(broken, STORE_RESTART_MIN_FREE_BYTES - 1, NATS_RESTART_BACKOFF_S), "still full"
    assert not restart_store(broken, STORE_RESTART_MIN_FREE_BYTES, NATS_RESTART_BACKOFF_S - 1), "just restarted"
    assert not restart_store(parse_health(200, b'{"status":"ok"}'), 1 << 40, 1e9)


def test_a_restarted_service_leaks_no_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each spawn opens the service's log for the child; the parent's copy is closed at once (as EmbeddedNats's
    is), not left to the garbage collector on every restart of a crashing service."""
    monkeypatch.setattr("weightflow.stack.service_command", lambda name: [sys.executable, "-c", f"print({name!r})"])
    stack = Stack(Settings(home=tmp_path / "home", nats_url="nats://127.0.0.1:1"), services=("requirements",))
    before = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            stack.spawn("requirements").wait(timeout=60)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
    assert len(os.listdir("/proc/self/fd")) == before
    assert (stack.home / "logs" / "requirements-0.log").read_text().split() == ["requirements"] * 3
