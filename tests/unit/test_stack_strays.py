"""`Stack.stop` stops service processes it lost track of, and only its own.

A clean-clone CI run found `service monitoring` still running after `weightflow up` was stopped by SIGINT: a
signal that lands while `spawn` restarts a service can leave a started child that `procs` never recorded. The
sweep is keyed on the service command and the stack's WEIGHTFLOW_HOME, so another stack's processes (a test's
fixture stack, a second `up` on another home) are left alone. Real child processes, a stand-in command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from weightflow import stack as stack_module
from weightflow.shared.settings import Settings
from weightflow.stack import Stack


def _sleeper(name: str) -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(120)", "service", name]


def test_stop_ends_a_lost_service_process_of_its_home_and_no_other(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack_module, "service_command", _sleeper)
    stack = Stack(Settings(home=tmp_path / "mine", trace_file=False, nats_url="nats://127.0.0.1:9"),
                  services=("monitoring",))
    tracked = stack.spawn("monitoring")

    def started(home: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ, WEIGHTFLOW_HOME=str(home.resolve()))
        return subprocess.Popen(_sleeper("monitoring"), env=env)

    lost, other = started(tmp_path / "mine"), started(tmp_path / "theirs")
    try:
        stack.stop(timeout=10)
        assert tracked.poll() is not None
        assert lost.wait(timeout=10) is not None, "the lost process of this stack was stopped"
        assert other.poll() is None, "another home's process is not this stack's to stop"
        assert psutil.Process(other.pid).is_running()
    finally:
        for proc in (tracked, lost, other):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
