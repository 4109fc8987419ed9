"""The embedded default: a private nats-server plus one process per service, supervised.

Each service is its own OS process (`weightflow service NAME`), exactly as it would run in a container,
so killing or restarting one touches nothing else. A crashed service is restarted; JetStream redelivers
what it held.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from contracts.topology import SERVICES
from shared.natsd import EmbeddedNats
from shared.ops_server import targets
from shared.settings import NATS_URL_FILE, Settings


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
            self.nats = EmbeddedNats(self.home / "nats").start()
            (self.home / NATS_URL_FILE).write_text(self.nats.url)
            self.settings = self.settings.model_copy(update={"nats_url": self.nats.url})
        for name in self.services:
            for replica in range(self.replicas):
                self.spawn(name, replica)
        return self

    def key(self, name: str, replica: int = 0) -> str:
        return f"{name}-{replica}"

    def spawn(self, name: str, replica: int = 0) -> subprocess.Popen[bytes]:
        targets(self.home, prune=True)  # a killed process leaves its target behind: Prometheus would alert on it
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = (logs / f"{self.key(name, replica)}.log").open("ab")
        proc = subprocess.Popen(service_command(name), env=self.service_env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        self.procs[self.key(name, replica)] = proc
        return proc

    def supervise_once(self) -> list[str]:
        """Restart any service process that exited; returns the keys restarted."""
        restarted = []
        for key, proc in list(self.procs.items()):
            if proc.poll() is not None:
                name, replica = key.rsplit("-", 1)
                self.restarts[key] = self.restarts.get(key, 0) + 1
                self.spawn(name, int(replica))
                restarted.append(key)
        return restarted

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
        if self.nats is not None:
            self.nats.stop()
            (self.home / NATS_URL_FILE).unlink(missing_ok=True)
            self.nats = None
