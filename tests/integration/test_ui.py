"""`weightflow ui`: the read-only web app over a real nats-server's event stream, served by uvicorn, looked at in
a real headless Chromium (marker `browser`) while events of real runs (tests/pages_fixtures.py) arrive."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import uvicorn

from weightflow.client import Client
from weightflow.contracts.base import Event
from weightflow.contracts.workflow import WorkflowHalted
from weightflow.shared.natsd import EmbeddedNats, free_port
from weightflow.shared.settings import Settings
from weightflow.ui import app as ui_app
from weightflow.ui import create_app

from ..pages_fixtures import Runs, artifacts_dir, build_runs, chromium, console_errors, full_screenshot


@dataclass
class Served:
    url: str
    settings: Settings


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return build_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A nats-server and the UI over it, on a free loopback port, in this process."""
    tmp = tmp_path_factory.mktemp("ui")
    with EmbeddedNats(tmp / "nats") as nats_server:
        settings = Settings(home=tmp / "home", nats_url=nats_server.url, trace_file=False)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the UI did not start in 20 s"
            time.sleep(0.05)
        try:
            yield Served(f"http://127.0.0.1:{port}", settings)
        finally:
            server.should_exit = True
            thread.join(10)


def publish(settings: Settings, events: list[Event]) -> None:
    async def go() -> None:
        async with Client(settings) as client:
            for e in events:
                await client.publish(e)

    asyncio.run(go())


def wait_for_version(url: str, at_least: int) -> None:
    """The UI has read this many events (its /version starts with the count)."""
    deadline = time.monotonic() + 20
    while int(httpx.get(f"{url}/version").text.split(":")[0]) < at_least:
        assert time.monotonic() < deadline, "the UI did not read the events in 20 s"
        time.sleep(0.2)


def test_no_traceback_ever_reaches_the_page(served: Served, runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(served.settings, runs.tuned)
    wait_for_version(served.url, 1)
    missing = httpx.get(f"{served.url}/runs/not-a-run")
    assert missing.status_code == 404 and "is not a run id" in missing.text and "Traceback" not in missing.text
    invalid = httpx.get(f"{served.url}/runs/not-a-run/version")  # FastAPI's own answer was JSON echoing the input
    assert invalid.status_code == 404 and invalid.headers["content-type"].startswith("text/html"), invalid.text
    assert "not-a-run" not in invalid.text and "uuid" not in invalid.text.lower()

    def broken(*_: Any, **__: Any) -> str:
        raise RuntimeError("secret detail of a bug")

    monkeypatch.setattr(ui_app, "render_run_page", broken)
    failed = httpx.get(f"{served.url}/runs/{runs.tuned[0].run_id}")
    assert failed.status_code == 500 and "Something went wrong" in failed.text
    assert "secret detail" not in failed.text and "Traceback" not in failed.text and "RuntimeError" not in failed.text
    for method in (httpx.post, httpx.put, httpx.delete):
        assert method(f"{served.url}/runs/{runs.tuned[0].run_id}").status_code == 405, "read-only"


def test_the_ui_creates_nothing_on_the_server(tmp_path: Path) -> None:
    """Read-only down to NATS: the UI's feed, started before any service, waits for the stream (saying so on
    the page) instead of creating it."""
    with EmbeddedNats(tmp_path / "nats") as nats_server:
        settings = Settings(home=tmp_path / "home", nats_url=nats_server.url, trace_file=False)

        async def go() -> tuple[list[str], str | None]:
            feed = ui_app.EventFeed(settings)
            feed.start()
            await asyncio.sleep(1.5)
            await feed.stop()
            nc = await nats.connect(nats_server.url)
            try:
                names = [s.config.name for s in await nc.jetstream().streams_info()]
            finally:
                await nc.close()
            return names, feed.error

        streams, error = asyncio.run(go())
        assert streams == [], "the UI created a stream"
        assert error is not None and "not following the event stream" in error


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    yield from chromium()


@pytest.mark.browser
def test_the_ui_shows_a_new_run_without_a_reload(served: Served, runs: Runs, driver: Any, tmp_path: Path) -> None:
    driver.get(served.url + "/")
    driver.execute_script("window.__not_reloaded = true;")
    halted_run = str(runs.halted[0].run_id)
    assert not driver.find_elements("css selector", f'tr[data-run="{halted_run}"]')
    publish(served.settings, runs.halted)
    deadline = time.monotonic() + 20
    while not driver.find_elements("css selector", f'tr[data-run="{halted_run}"]'):
        assert time.monotonic() < deadline, "the new run did not appear in 20 s"
        time.sleep(0.2)
    assert driver.execute_script("return window.__not_reloaded === true"), "shown without reloading the page"
    wait_for_version(served.url, len(runs.halted))
    time.sleep(2)  # the next poll brings the rest of the run
    (halt,) = [e for e in runs.halted if isinstance(e, WorkflowHalted)]
    assert halt.reason in driver.find_element("id", "halts").text
    assert "HALTED" in driver.find_element("id", "deployments").text
    assert console_errors(driver) == []
    full_screenshot(driver, artifacts_dir(tmp_path) / "ui-index.png")
    driver.find_element("css selector", f'tr[data-run="{halted_run}"] a').click()
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length") < 4:
        assert time.monotonic() < deadline, "the run page's plots were not drawn in 30 s"
        time.sleep(0.2)
    assert driver.find_element("id", "outcome").text.startswith("Halted: ")
    assert console_errors(driver) == []
    full_screenshot(driver, artifacts_dir(tmp_path) / "ui-run.png")
