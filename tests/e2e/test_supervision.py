"""The embedded stack's supervisor and a service that refuses to start.

A service whose database is behind this release's schema exits with code 78 (REFUSED_EXIT) and one line saying to run
`weightflow db upgrade`. Restarting it would only refuse again, every half second, forever: the supervisor
records the line once and leaves the process down; `demo` gives up at once with that line, and `up` reports each
refusal once and stops when every service refused. A real database made at the previous revision, a real service
process, the CLI's own supervision round.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightflow.cli.common import Refused
from weightflow.cli.workflow import _unless_refused, supervise_round
from weightflow.shared.settings import Settings
from weightflow.stack import REFUSED_EXIT, Stack

from ..conftest import ROOT
from ..integration.test_migrations import at_revision

UPGRADE = "run `weightflow db upgrade`"


def behind(home: Path) -> Settings:
    """Settings for `home`, whose SQLite database is at revision 0001 (the previous schema)."""
    settings = Settings(home=home, trace_file=False)
    home.mkdir(parents=True)
    at_revision(settings.resolved_database_url(), "0001").dispose()
    return settings


@pytest.mark.e2e
def test_a_service_refused_for_its_schema_is_reported_once_and_not_restarted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = Stack(behind(tmp_path / "home"), services=("requirements",)).start()
    try:
        key = stack.key("requirements")
        proc = stack.procs[key]
        assert proc.wait(timeout=180) == REFUSED_EXIT
        for _ in range(3):
            assert stack.supervise_once() == []
        assert stack.procs[key] is proc and stack.restarts == {}, "a refusal is not restarted"
        assert list(stack.refused) == [key]
        assert UPGRADE in stack.refused[key] and "revision 0001" in stack.refused[key]
        assert "Traceback" not in stack.log_file(key).read_text()

        # `demo` stops following its run at once, with the service's line (exit 2 through the CLI's refusals)
        with pytest.raises(Refused, match=r"requirements-0 refused to start .*run `weightflow db upgrade`"):
            asyncio.run(_unless_refused(stack, asyncio.sleep(600), poll_s=0.05))

        # `up` says it once, however many rounds pass, and stops once every service process refused
        reported: set[str] = set()
        with pytest.raises(Refused, match="every service refused to start"):
            supervise_round(stack, reported)
        with pytest.raises(Refused):
            supervise_round(stack, reported)
        said = capsys.readouterr().err
        assert said.count("requirements-0 refused to start") == 1 and UPGRADE in " ".join(said.split()), said
        assert "restarted requirements" not in said
    finally:
        stack.stop()


@pytest.mark.parametrize("setting", [{"WEIGHTFLOW_ACK_WAIT_S": "soon"}, {"WEIGHTFLOW_PLUGINS": "no_such_plugin"}],
                         ids=["bad-setting", "missing-plugin"])
def test_a_service_refusing_a_setting_exits_78_with_one_line(setting: dict[str, str], tmp_path: Path) -> None:
    """Not only the schema: any refusal before the service serves is the refused-to-start code (a supervisor leaves
    it down), one line naming what to change; the CLI's own exit 2 stays for commands that are not services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTFLOW_")}
    env.update(WEIGHTFLOW_HOME=str(tmp_path / "home"), WEIGHTFLOW_TRACE_FILE="false", **setting)
    proc = subprocess.run([sys.executable, "-m", "weightflow.cli", "service", "requirements"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == REFUSED_EXIT, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and next(iter(setting)) in proc.stderr.replace("\n", " "), proc.stderr
