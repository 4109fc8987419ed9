"""The embedded default: a private nats-server plus one process per service, supervised.

Each service is its own OS process (`weightflow service NAME`), exactly as it would run in a container,
so killing or restarting one touches nothing else. A crashed service is restarted; JetStream redelivers
what it held. One that exits with code 2 refused to start (a database behind this release's schema, a setting
it cannot use: `weightflow service` says which in one line, and what to run) and is not restarted, since it
would only refuse again: the stack keeps that line in `refused` for `up` and `demo` to report once.
The nats-server is supervised too: one that exited is restarted, and one whose JetStream
store cannot be written (nats-server keeps a write error such as `no space left on device` until it
restarts, even after space is freed) is restarted on the same port and store once space is back; the
services reconnect and their outbox relays publish what waited, with the same event ids.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from weightflow.contracts.topology import SERVICES
from weightflow.shared.natsd import EmbeddedNats, StoreHealth
from weightflow.shared.ops_server import targets
from weightflow.shared.settings import NATS_MONITOR_FILE, NATS_URL_FILE, REFUSED_TO_START_EXIT, Settings

log = logging.getLogger("weightflow.stack")

NATS_KEY = "nats-server"
NATS_CHECK_S = 2.0  # how often the store's health is read (one local HTTP request)
NATS_RESTART_BACKOFF_S = 10.0  # at most one store restart this often, should the error come straight back
# Free space under the store before a restart is worth it: nats-server's file store appends to blocks of up
# to 8 MiB per stream; two of them, so the restarted server does not meet the same wall at its first write.
STORE_RESTART_MIN_FREE_BYTES = 16 << 20


def restart_store(health: StoreHealth, free_bytes: int, since_last_restart_s: float) -> bool:
    """Restart nats-server when its store reports a write error, space is back, and it was not just restarted."""
    return bool(health.store_errors) and free_bytes >= STORE_RESTART_MIN_FREE_BYTES \
        and since_last_restart_s >= NATS_RESTART_BACKOFF_S


# `weightflow service` exits with this code when it refuses its settings or database (the CLI's refusals, a
# SchemaMismatchError): restarting cannot help until a person acts.
REFUSED_EXIT = REFUSED_TO_START_EXIT  # what a service process exits with when it refuses to start (not restarted)


def refusal_line(log_file: Path, tail_bytes: int = 16 << 10) -> str:
    """What a refused service said: the message of the last ERROR line of its log (the CLI's `error:` line for a
    refused setting), else its last line."""
    try:
        with log_file.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if " ERROR " in line:
            return line.split(" ERROR ", 1)[1].split(": ", 1)[-1]
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return lines[-1] if lines else f"no message; see {log_file}"


def service_command(name: str) -> list[str]:
    return [sys.executable, "-m", "weightflow.cli", "service", name]


@dataclass
class Stack:
    settings: Settings
    services: tuple[str, ...] = SERVICES
    replicas: int = 1
    env: dict[str, str] = field(default_factory=dict)
    nats: EmbeddedNats | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    # Processes that exited with REFUSED_EXIT, not restarted: key -> what they said (see `refusal_line`).
    refused: dict[str, str] = field(default_factory=dict)
    # The store's last reported write error (None while writable), for `up` to say what it waits for.
    store_error: str | None = None
    _nats_checked: float = field(default=0.0, repr=False)
    _nats_restarted: float = field(default=0.0, repr=False)

    @property
    def home(self) -> Path:
        return self.settings.home.resolve()

    def service_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env["WEIGHTFLOW_HOME"] = str(self.home)
        env["WEIGHTFLOW_NATS_URL"] = self.settings.resolved_nats_url()
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # Every process serves /metrics, /healthz and /readyz on a free loopback port, announced under
        # <home>/ops/targets/ (Prometheus file_sd; `weightflow doctor`), unless a port was chosen.
        env.setdefault("WEIGHTFLOW_OPS_PORT", "0")
        return env

    def start(self) -> Stack:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.settings.nats_url:
            self.nats = EmbeddedNats(self.home / "nats")  # known before it starts: a signal now still stops it
            self.nats.start()
            (self.home / NATS_URL_FILE).write_text(self.nats.url)
            (self.home / NATS_MONITOR_FILE).write_text(self.nats.monitor_url)
            self.settings = self.settings.model_copy(update={"nats_url": self.nats.url})
        for name in self.services:
            for replica in range(self.replicas):
                self.spawn(name, replica)
        return self

    def key(self, name: str, replica: int = 0) -> str:
        return f"{name}-{replica}"

    def log_file(self, key: str) -> Path:
        return self.home / "logs" / f"{key}.log"

    def running(self) -> list[str]:
        """The keys of the service processes still running."""
        return [key for key, proc in self.procs.items() if proc.poll() is None]

    def spawn(self, name: str, replica: int = 0) -> subprocess.Popen[bytes]:
        targets(self.home, prune=True)  # a killed process leaves its target behind: Prometheus would alert on it
        key = self.key(name, replica)
        self.refused.pop(key, None)
        self.log_file(key).parent.mkdir(parents=True, exist_ok=True)
        with self.log_file(key).open("ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(service_command(name), env=self.service_env(), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs[key] = proc
        return proc

    def supervise_once(self) -> list[str]:
        """Restart any service process that exited, except one that refused to start (recorded in `refused`), and
        the nats-server when it exited or its store cannot be written while space is back; returns the keys
        restarted (`nats-server` for the broker)."""
        restarted = []
        for key, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None or key in self.refused:
                continue
            if code == REFUSED_EXIT:
                self.refused[key] = refusal_line(self.log_file(key))
                log.info("%s refused to start and is not restarted: %s", key, self.refused[key])  # callers report
                continue
            name, replica = key.rsplit("-", 1)
            self.restarts[key] = self.restarts.get(key, 0) + 1
            self.spawn(name, int(replica))
            restarted.append(key)
        if self.supervise_nats():
            restarted.append(NATS_KEY)
        return restarted

    def supervise_nats(self) -> bool:
        """True when the embedded nats-server was restarted now."""
        nats = self.nats
        if nats is None:
            return False
        now = time.monotonic()
        if nats.process is None or nats.process.poll() is not None:
            if now - self._nats_restarted < NATS_CHECK_S:
                return False
            log.error("nats-server exited (see %s); starting it again", nats.log_file)
            return self._restart_nats(now)
        if now - self._nats_checked < NATS_CHECK_S:
            return False
        self._nats_checked = now
        health = nats.health()
        if not health.store_errors:
            if self.store_error is not None:
                log.warning("JetStream store writable again")
            self.store_error = None
            return False
        if self.store_error is None:
            log.error("JetStream store not writable: %s", health.store_errors[0])
        self.store_error = health.store_errors[0]
        nats.store_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(nats.store_dir).free
        if not restart_store(health, free, now - self._nats_restarted):
            return False
        log.warning("JetStream store not writable (%s) with %d MiB free again: restarting nats-server on the "
                    "same port and store", self.store_error, free >> 20)
        return self._restart_nats(now)

    def _restart_nats(self, now: float) -> bool:
        assert self.nats is not None
        self._nats_restarted = self._nats_checked = now
        self.restarts[NATS_KEY] = self.restarts.get(NATS_KEY, 0) + 1
        try:
            self.nats.restart()
        except (OSError, RuntimeError, TimeoutError):
            log.exception("nats-server did not start again; the next supervision round retries")
            return False
        return True

    @contextlib.contextmanager
    def supervising(self, interval: float = 0.5) -> Iterator[None]:
        """Supervise in a background thread while the block runs (for callers busy with something else)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.supervise_once()
                except Exception:
                    log.exception("supervision round failed")

        thread = threading.Thread(target=loop, name="weightflow-supervisor", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @contextlib.contextmanager
    def until_signalled(self) -> Iterator[None]:
        """Run the block until it ends, SIGINT or SIGTERM arrives, then stop every child, nats-server included.

        Python's default SIGTERM ends the process at once, skipping any `finally`: the nats-server it started
        (its own child, not in a group anyone signals) outlived a `weightflow demo --keep` stopped by a supervisor.
        Here both signals raise KeyboardInterrupt in the main thread, so the block unwinds (an asyncio.run in it
        cancels its tasks), and while the stack stops a second signal is ignored rather than cutting it short.
        Main thread only (signal handlers are).
        """
        previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        except KeyboardInterrupt:
            pass  # asked to stop: not an error
        finally:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        self._stop_strays(timeout=max(1.0, deadline - time.monotonic()))
        if self.nats is not None:
            self.nats.stop()
            (self.home / NATS_URL_FILE).unlink(missing_ok=True)
            (self.home / NATS_MONITOR_FILE).unlink(missing_ok=True)
            self.nats = None

    def _stop_strays(self, timeout: float) -> None:
        """Stop this stack's service processes that `procs` does not hold. A signal that lands while `spawn` runs
        (a restart at the moment Ctrl-C arrives) can leave a started child that nothing recorded; a clean-clone
        CI run once found `service monitoring` alive after `up` stopped. Only our own children running a service
        command with this stack's home: a test's other stacks and nats-servers are left alone."""
        commands = {tuple(service_command(name)) for name in SERVICES}
        home = str(self.home)
        strays, names = [], []
        for child in psutil.Process().children(recursive=True):
            try:
                command = tuple(child.cmdline())
                if command in commands and child.environ().get("WEIGHTFLOW_HOME") == home:
                    strays.append(child)
                    names.append(f"{command[-1]} (pid {child.pid})")
            except psutil.Error:
                continue  # gone, or not ours to read
        if not strays:
            return
        log.warning("stopping service processes the stack had lost track of: %s", ", ".join(names))
        for proc in strays:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(strays, timeout=timeout)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
