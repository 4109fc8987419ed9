"""The loop-back on a real nats-server and six real service processes, with tiny real checkpoints scored
by a plugin task the services load from WEIGHTFLOW_PLUGINS (no service code knows it). Each test owns its
deployment and candidate names, so any one runs alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.plugins.scripted import NAME, make_checkpoint
from weightflow.cli import app as cli
from weightflow.client import RunTracker
from weightflow.contracts.base import Event
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed
from weightflow.contracts.registry import DeploymentPromoted, RolledBack
from weightflow.contracts.workflow import WorkflowHalted, WorkflowRerouted
from weightflow.submission import prepare

from ..conftest import EXAMPLE_DIR, LiveStack, start_stack

pytestmark = [pytest.mark.e2e]


def of(events: list[Event], cls: type[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


class Scripted:
    def __init__(self, live: LiveStack, root: Path, script: Path) -> None:
        self.live, self.root, self.script = live, root, script
        self.env = {"WEIGHTFLOW_HOME": str(live.settings.home), "WEIGHTFLOW_NATS_URL": str(live.settings.nats_url)}

    def scores(self, **scores: float) -> None:
        """Merge `name_split=score` entries (e.g. `la_canary=0.3`) into the shared script."""
        table = json.loads(self.script.read_text()) if self.script.exists() else {}
        for key, value in scores.items():
            name, split = key.rsplit("_", 1)
            table[f"{name}/*/*/{split}"] = value
        tmp = self.script.with_suffix(".tmp")
        tmp.write_text(json.dumps(table))
        tmp.replace(self.script)

    def deployment(self, name: str, candidates: list[str], **changes: Any) -> Path:
        folder = self.root / name
        shutil.copytree(EXAMPLE_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        for candidate in candidates:
            make_checkpoint(folder / "models" / candidate, candidate, padding_params=400_000)
        doc = yaml.safe_load((folder / "requirements.yaml").read_text())
        doc["task"]["type"] = NAME
        doc["deployment"]["name"] = name
        doc["deployment"]["hardware"]["memory_mb"] = 3
        doc["deployment"]["hardware"]["runtime_mb"] = 0
        doc["candidates"] = [{"path": f"models/{c}"} for c in candidates]
        doc["monitoring"]["canary_interval_s"] = 3600
        for key, value in changes.items():
            section, field = key.split("__")
            doc[section][field] = value
        (folder / "requirements.yaml").write_text(yaml.safe_dump(doc))
        return folder / "requirements.yaml"

    def run(self, path: Path, done: Callable[[Event], bool] | None = None, *, changed: bool = False) -> RunTracker:
        return self.live.run(prepare(path, self.live.store, changed=changed).event, timeout=300, done=done)

    def cli(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, list(args), env=self.env)
        return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    root = tmp_path_factory.mktemp("loopback")
    script = root / "script.json"
    script.write_text("{}")
    live = start_stack(root / "home", WEIGHTFLOW_PLUGINS="tests.plugins.scripted", WEIGHTFLOW_TEST_SCRIPT=script,
                       WEIGHTFLOW_CANARY_INTERVAL_S=3600, WEIGHTFLOW_ACK_WAIT_S=20, WEIGHTFLOW_DEVICE="cpu")
    try:
        import os

        os.environ["WEIGHTFLOW_TEST_SCRIPT"] = str(script)  # this process validates with the plugin too
        import tests.plugins.scripted  # noqa: F401

        yield Scripted(live, root, script)
    finally:
        live.stack.stop()


def test_a_canary_that_disagrees_converges_on_another_candidate(scripted: Scripted) -> None:
    scripted.scores(la_eval=0.95, lb_eval=0.9, la_canary=0.3, lb_canary=0.92)
    tracker = scripted.run(scripted.deployment("loop-a", ["la", "lb"]))
    assert tracker.outcome == "succeeded", [e.type_name() for e in tracker.events] + [scripted.live.logs()]
    (failed,) = of(tracker.events, CanaryFailed)
    assert failed.model.candidate == "la" and failed.measurement.interval.high < 0.8
    (reroute,) = of(tracker.events, WorkflowRerouted)
    assert reroute.attempt == 1 and reroute.failed.candidate == "la"
    assert of(tracker.events, CanaryPassed)[-1].model.candidate == "lb"
    assert len(tracker.events) < 60
    code, said = scripted.cli("canary", "loop-a")
    assert code == 0 and "canary passed" in said and "[" in said, said  # the interval is shown


def test_nothing_left_halts_then_resume_and_change_take_over(scripted: Scripted) -> None:
    scripted.scores(ha_eval=0.95, hb_eval=0.9, ha_canary=0.3, hb_canary=0.3)
    path = scripted.deployment("loop-halt", ["ha", "hb"], monitoring__max_reroutes=3)
    tracker = scripted.run(path)
    (halted,) = of(tracker.events, WorkflowHalted)
    assert tracker.outcome == "failed" and halted.deployment == "loop-halt"
    assert any("data.canary" in advice for advice in halted.advice), halted.advice
    # both failed their canary before promotion: halted at once (one reroute of three), nothing went live
    assert len(of(tracker.events, WorkflowRerouted)) == 1 and len(tracker.events) < 80
    assert [e.before_promotion for e in of(tracker.events, CanaryFailed)] == [True, True]
    assert not [e for e in scripted.live.history() if isinstance(e, DeploymentPromoted) and e.deployment == "loop-halt"]
    code, said = scripted.cli("canary", "loop-halt")
    assert code == 1 and "no live manifest" in said, said
    history = scripted.live.history()
    assert not [e for e in history if isinstance(e, WorkflowRerouted) and e.deployment == "loop-halt"
                and e.occurred_at > halted.occurred_at], "halted: no reroute until an operator acts"
    code, said = scripted.cli("doctor")
    assert code == 1 and "loop-halt is halted" in said
    code, said = scripted.cli("resume", "loop-halt")
    assert code == 0 and "resumed loop-halt" in said, said
    code, said = scripted.cli("resume", "nope")
    assert code == 1 and "no accepted requirements" in said
    scripted.scores(ha_canary=0.95)  # the canary data problem is fixed by a new version
    changed = scripted.run(path, changed=True)
    assert changed.outcome == "succeeded", [e.type_name() for e in changed.events]
    accepted = next(e for e in changed.events if e.type_name() == "requirements.accepted")
    assert accepted.context.version == 2 and accepted.context.exclusions == []


def test_auto_rollback_keeps_the_last_good_release_live(scripted: Scripted) -> None:
    scripted.scores(ra_eval=0.95, rb_eval=0.9, ra_canary=0.95, rb_canary=0.95)
    path = scripted.deployment("loop-roll", ["ra", "rb"])
    assert scripted.run(path).outcome == "succeeded"
    first = [e for e in scripted.live.history() if isinstance(e, DeploymentPromoted)
             and e.deployment == "loop-roll"][-1].manifest_id
    scripted.scores(ra_canary=0.3)  # ra drifts: the reroute puts rb live
    code, _ = scripted.cli("canary", "loop-roll")
    assert code == 1

    def rb_passed(e: Event) -> bool:
        return isinstance(e, CanaryPassed) and e.deployment == "loop-roll" and e.model.candidate == "rb"

    _wait(scripted, rb_passed)
    scripted.scores(ra_canary=0.95, rb_canary=0.3)  # rb drifts; ra is fine again
    code, said = scripted.cli("canary", "loop-roll")
    assert code == 1 and "canary FAILED" in said
    rolled = _wait(scripted, lambda e: isinstance(e, RolledBack) and e.deployment == "loop-roll")
    assert rolled.automatic and rolled.to_manifest_id == first
    _wait(scripted, lambda e: isinstance(e, WorkflowHalted) and e.deployment == "loop-roll")
    promoted = [e for e in scripted.live.history() if isinstance(e, DeploymentPromoted)
                and e.deployment == "loop-roll"]
    assert promoted[-1].manifest_id == first, "the good release stays live after the loop halts"


def test_rollback_cli_walks_history_and_answers_mistakes(scripted: Scripted) -> None:
    scripted.scores(wa_eval=0.95, wa_canary=0.95)
    path = scripted.deployment("loop-hist", ["wa"])
    releases = []
    for i, threshold in enumerate((0.80, 0.81, 0.82, 0.83)):
        doc = yaml.safe_load(path.read_text())
        doc["quality"]["threshold"] = threshold
        path.write_text(yaml.safe_dump(doc))
        tracker = scripted.run(path, changed=bool(i))
        assert tracker.outcome == "succeeded", [e.type_name() for e in tracker.events]
        releases.append(of(tracker.events, DeploymentPromoted)[-1].manifest_id)
    for expected in reversed(releases[:-1]):
        code, said = scripted.cli("rollback", "loop-hist")
        assert code == 0 and f"→ {expected[:12]}" in said and "older than the newest v4" in said, said
    code, said = scripted.cli("rollback", "loop-hist")
    assert code == 1 and "first release" in said
    other = [e for e in scripted.live.history() if isinstance(e, DeploymentPromoted)
             and e.deployment != "loop-hist"]
    if other:
        code, said = scripted.cli("rollback", "loop-hist", "--to", other[0].manifest_id)
        assert code == 1 and "belongs to deployment" in said
    code, said = scripted.cli("rollback", "no-such-deployment")
    assert code == 1 and "never been promoted" in said


def _wait(scripted: Scripted, predicate: Callable[[Event], bool], timeout: float = 120.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in scripted.live.history() if predicate(e)]
        if found:
            return found[-1]
        time.sleep(0.5)
    raise AssertionError(f"not seen within {timeout} s\n{scripted.live.logs()}")

