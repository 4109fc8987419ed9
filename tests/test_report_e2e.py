"""The report of a run through the real stack (six service processes, the shipped support-tickets example on
real weights), written by the CLI and opened in a real headless Chromium: what the unit-lane pages show holds
for a run the services made, runbook from the artifact store included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contracts.base import Event
from contracts.monitoring import CanaryPassed
from weightflow.cli import app as cli
from weightflow.pages import run_scope
from weightflow.pages.figures import benchmarked
from weightflow.pages.trail import trail

from .conftest import LiveStack
from .pages_fixtures import artifacts_dir, chromium, console_errors, full_screenshot
from .test_e2e import example_run
from .test_report import drawn_points, open_page

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    yield from chromium()


def test_the_report_of_a_real_run_in_a_browser(live_stack: LiveStack, driver: Any, tmp_path: Path) -> None:
    events: list[Event] = example_run(live_stack)
    run_id = events[0].run_id
    out = tmp_path / "report.html"
    env = {"WEIGHTFLOW_HOME": str(live_stack.settings.home), "WEIGHTFLOW_NATS_URL": str(live_stack.settings.nats_url)}
    result = CliRunner().invoke(cli, ["report", str(run_id), "--html", str(out)], env=env)
    assert result.exit_code == 0, result.output
    picked, outcome = run_scope(live_stack.history(), run_id)
    assert outcome == "succeeded"
    open_page(driver, out, plots=4)
    assert console_errors(driver) == []
    points = drawn_points(driver)
    assert points["candidates-plot"] == (2 * len(benchmarked(picked)), 0)
    canaries = [e for e in picked if isinstance(e, CanaryPassed) and e.measurement is not None]
    assert points["canary-plot"][0] == len(canaries) >= 1
    steps = driver.execute_script(
        "return Array.from(document.querySelectorAll('#decision-trail li')).map(li => li.dataset.type)"
    )
    assert steps == [s.event_type for s in trail(picked)]
    assert driver.find_element("id", "outcome").text.startswith("Deployed: ")
    assert driver.find_elements("css selector", "pre.runbook"), "the runbook, read from the artifact store"
    full_screenshot(driver, artifacts_dir(tmp_path) / "report-real-run.png")
