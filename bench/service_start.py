"""11. Fast start (issue 26, target 5): process start to `/readyz` 200 of a service, and of the whole stack.

weightflow imports torch on a service's first model work, not at its start. The baseline is the same service
with torch imported before it starts (`python -c "import torch; ..."`), which is what every service paid before:
the two are interleaved in one invocation on the same nats-server and database, so the ratio holds whatever the
machine's load. The stack row is `weightflow up`'s own path (`Stack.start`: a nats-server and six service
processes) until every service reports ready.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.harness import Config, Report, Row, Stat, interleave, stop, wait_ready

NAME = "service_start"
SERVICES = ("requirements", "benchmark", "tuning")
WITH_TORCH = ("import runpy, sys, torch; sys.argv[0] = 'weightflow'; "
              "runpy.run_module('weightflow.cli', run_name='__main__')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until_ready(command: list[str], env: dict[str, str], port: int) -> float:
    """Seconds from spawning `command` to its /readyz answering 200; the process is stopped after."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=120, poll_s=0.02)
        return time.perf_counter() - started
    finally:
        stop(proc, timeout=30)


def _start(command: list[str], env: dict[str, str]) -> float:
    port = _free_port()
    return _until_ready(command, {**env, "WEIGHTFLOW_OPS_PORT": str(port)}, port)


def _stack_ready(home: Path, processes: int, started: float, timeout: float = 180.0) -> float:
    """Seconds from `started` until every announced service process answers /readyz 200 (each announces its
    ops port under the stack's home: shared.ops_server.targets)."""
    from weightflow.shared.ops_server import targets

    while True:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"the stack in {home} was not ready in {timeout:.0f} s")
        found = [t for t in targets(home) if t.labels.get("kind") == "service"]
        ready = 0
        for target in found:
            with contextlib.suppress(httpx.TransportError):
                ready += httpx.get(f"http://{target.address}/readyz", timeout=1.0).status_code == 200
        if ready >= processes:
            return time.perf_counter() - started
        time.sleep(0.05)


def run(cfg: Config) -> Report:
    from weightflow.shared.natsd import EmbeddedNats
    from weightflow.shared.settings import Settings
    from weightflow.stack import Stack

    report = Report(NAME, "11. Fast start: a service's process start to ready (torch imported on first model work)")
    reps = 2 if cfg.smoke else cfg.reps
    services = SERVICES[:1] if cfg.smoke else SERVICES
    report.config = {"services": list(services), "reps": reps}
    with tempfile.TemporaryDirectory(prefix="wf-bench-start-") as tmp_name:
        tmp = Path(tmp_name)
        with EmbeddedNats(tmp / "nats") as nats:
            for name in services:
                env = {**os.environ, "WEIGHTFLOW_HOME": str(tmp / "home"), "WEIGHTFLOW_NATS_URL": nats.url,
                       "WEIGHTFLOW_TRACE_FILE": "false"}
                lazy = functools.partial(_start, [sys.executable, "-m", "weightflow.cli", "service", name], env)
                eager = functools.partial(_start, [sys.executable, "-c", WITH_TORCH, "service", name], env)
                ours, baseline = interleave([lazy, eager], reps)
                report.add(Row(f"{name}: process start to ready", "s", Stat.of(ours), Stat.of(baseline),
                               "the same service with torch imported first", better="lower",
                               note="target: within 3 s on an idle machine"))
        stack_s = []
        for rep in range(1 if cfg.smoke else max(1, reps // 2)):
            home = tmp / f"stack-{rep}"
            stack = Stack(Settings(home=home, trace_file=False))
            started = time.perf_counter()
            stack.start()
            try:
                stack_s.append(_stack_ready(home, len(stack.procs), started))
            finally:
                stack.stop()
        report.add(Row("`weightflow up`: nats-server and six services, all ready", "s", Stat.of(stack_s), None,
                       better="lower", note="target: within 10 s"))
    report.notes.append("Ready = /readyz answers 200: the database migrated, NATS connected, every consumer bound.")
    return report
