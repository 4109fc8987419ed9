"""`weightflow demo` stopped by a signal stops every process it started, its nats-server included.

With Python's default SIGTERM the CLI died at once, skipping its `finally`, and the nats-server child kept running
(holding its ports and JetStream store) after a supervisor stopped `demo --keep`. The real command, stopped as
soon as its whole stack is up (mid-run: the same handler covers the `--keep` loop after the run, without waiting
minutes for a run), by SIGTERM (what systemd, Docker or a CI runner send) and by SIGINT (Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from weightflow.contracts.topology import SERVICES
from weightflow.shared.settings import NATS_URL_FILE

from ..conftest import ROOT


def _stack_up(demo: subprocess.Popen[bytes], home: Path, timeout: float = 120.0) -> list[psutil.Process]:
    """The demo's children once nats-server and one process per service run (and nats.url says where)."""
    deadline = time.monotonic() + timeout
    while True:
        assert demo.poll() is None, f"demo exited with {demo.returncode}"
        children: list[psutil.Process] = psutil.Process(demo.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children if c.is_running())
        if (home / NATS_URL_FILE).exists() and "nats-server" in names and all(
                f"service {name}" in names for name in SERVICES):
            return children
        assert time.monotonic() < deadline, f"the stack did not come up; running: {names}"
        time.sleep(0.2)


@pytest.mark.parametrize("command", [["demo", "--keep"], ["up"]], ids=["demo", "up"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stack_stopped_by_a_signal_stops_every_child_and_nats_server(command: list[str], sig: signal.Signals,
                                                                        tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTFLOW_")}
    env.update(WEIGHTFLOW_HOME=str(home), WEIGHTFLOW_TRACE_FILE="false")
    demo = subprocess.Popen([sys.executable, "-m", "weightflow.cli", *command], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    children: list[psutil.Process] = []
    try:
        children = _stack_up(demo, home)
        demo.send_signal(sig)
        _, stderr = demo.communicate(timeout=90)
        assert b"Traceback" not in stderr, stderr.decode()[-3000:]
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"still running after demo stopped: {[' '.join(p.cmdline()) for p in alive]}"
        assert not (home / NATS_URL_FILE).exists(), "the stack's nats.url names a server that is gone"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for child in children:
            if child.is_running():
                child.kill()
