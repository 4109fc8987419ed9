"""Real runs for the page tests, and a real headless Chromium to look at them.

The runs go through all six services' real handlers in the in-process runner, on tiny real checkpoints
(loaded, quantized to int8, LoRA-tuned by the real model layer) scored by a script (tests/plugins/scripted.py),
so every event the pages read is one a service built. Two runs: one that needs int8, fails a canary, is
rerouted to tuning and converges (every section of the page has data), and one that halts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from weightflow.contracts.base import Event
from weightflow.contracts.workflow import WorkflowHalted
from weightflow.shared.artifacts import ArtifactStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@dataclass
class Runs:
    tuned: list[Event]  # every event of the tuned run's workflow, in order
    halted: list[Event]
    store: ArtifactStore | None = None  # the tuned run's artifact store (its sample logs, runbook)


def build_runs(tmp: Path) -> Runs:
    from tests.unit.test_workflow_unit import build_workflow

    with pytest.MonkeyPatch.context() as mp:
        flow = build_workflow(tmp / "tuned", mp)
        path = flow.requirements(candidates=[{"path": "models/a"}])
        flow.scores(a_eval=0.95, a_canary=0.7, a_int8_1_canary=0.92, a_int8_1_eval=0.95)
        flow.submit(path)
        tuned = list(flow.runner.log)
        store = flow.runner.store
    with pytest.MonkeyPatch.context() as mp:
        flow = build_workflow(tmp / "halted", mp)
        flow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.3, b_canary=0.3)
        flow.submit()
        halted = list(flow.runner.log)
    assert any(isinstance(e, WorkflowHalted) for e in halted)
    return Runs(tuned, halted, store)


def artifacts_dir(tmp: Path) -> Path:
    """Where screenshots go: $WEIGHTFLOW_TEST_ARTIFACTS (kept after the run, for a human to look at) or tmp."""
    folder = Path(os.environ.get("WEIGHTFLOW_TEST_ARTIFACTS") or tmp) / "pages"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium() -> Iterator[Any]:
    """A headless Chromium driven through chromedriver (selenium), logging the page's console."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} absent: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def full_screenshot(driver: Any, path: Path) -> Path:
    """The whole page, not the window: the window grows to the page's height first."""
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 40, 16000))
    driver.save_screenshot(str(path))
    driver.set_window_size(width, 1000)
    return path
