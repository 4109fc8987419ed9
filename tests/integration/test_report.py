"""`weightflow report`: the Markdown tables and the HTML page with plots, over real runs (all six services'
handlers on tiny real checkpoints, tests/pages_fixtures.py); the `browser` tests open the page in a real
headless Chromium and count what it drew."""

from __future__ import annotations

import asyncio
import html as htmlmod
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from typer.testing import CliRunner

from weightflow.cli import app as cli
from weightflow.client import Client
from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import CandidateBenchmarked, ModelArtifact, VariantBenchmarked
from weightflow.contracts.fitting import MemoryBudgetComputed
from weightflow.contracts.measurement import Interval, Measurement
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed
from weightflow.contracts.tuning import AdapterTrained, TuningGated
from weightflow.contracts.verdict import Miss, Verdict
from weightflow.contracts.workflow import WorkflowHalted
from weightflow.evaluations import evaluations, read_rows
from weightflow.pages import PageOptions, deployment_scope, render_deployment_page, render_run_page, run_scope
from weightflow.pages.figures import benchmarked, measured_peak_mb
from weightflow.pages.trail import trail
from weightflow.report import render
from weightflow.shared.natsd import EmbeddedNats

from ..pages_fixtures import Runs, artifacts_dir, build_runs, chromium, console_errors, full_screenshot


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return build_runs(tmp_path_factory.mktemp("runs"))


def first_run(events: list[Event]) -> UUID:
    return events[0].run_id


def page(events: list[Event]) -> tuple[str, list[Event], str]:
    picked, outcome = run_scope(events, first_run(events))
    return render_run_page(first_run(events), picked, outcome), picked, outcome


def of(events: list[Event], cls: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def test_the_page_of_a_tuned_run_has_every_stage_and_needs_no_network(runs: Runs) -> None:
    text, picked, outcome = page(runs.tuned)
    assert outcome == "succeeded" and "Deployed: scripted runs manifest" in text
    assert not re.search(r"<script[^>]*\bsrc=", text), "plotly.js is embedded, nothing is fetched"
    assert not re.search(r"<link[^>]*\bhref=\"(?!data:)", text), "no stylesheet or icon is fetched either"
    assert len(text) > 3_000_000, "plotly.js itself is in the file"
    for div in ("candidates-plot", "memory-plot", "quantization-plot", "lora-loss-0", "gate-0", "canary-plot"):
        assert f'id="{div}"' in text, div
    for absent in ("No LoRA adapter", "No candidate was measured", "No memory budget", "No canary has run"):
        assert absent not in text, absent
    types = re.findall(r'<li class="step \w+" data-type="(\w+)"', text)
    assert types == [s.event_type for s in trail(picked)] and "TuningGated" in types and "WorkflowRerouted" in types
    assert types.index("CanaryFailed") < types.index("WorkflowRerouted") < types.index("TuningGated")


def test_the_page_shows_each_evaluations_worst_rows_from_its_sample_log(runs: Runs) -> None:
    assert runs.store is not None
    store = runs.store
    picked, outcome = run_scope(runs.tuned, first_run(runs.tuned))
    found, without = evaluations(picked)
    assert found and without == 0, "every measurement a service announced names its sample log"
    assert {"benchmark", "variant benchmark", "tuned with its adapter", "registration canary", "canary"} <= {
        e.stage for e in found}
    # every one named by the table, a routed subclass (FitNeedsTuning) under the event it specialises: no second
    # "variant benchmark" under its class name
    from weightflow.evaluations import STAGES

    assert {e.stage for e in found} <= set(STAGES.values()), {e.stage for e in found}
    options = PageOptions(read_text=lambda digest: store.read_bytes(digest).decode())
    text = render_run_page(first_run(runs.tuned), picked, outcome, options)
    tables = re.findall(r'<table class="grid samples" data-digest="(\w+)">(.*?)</table>', text, re.S)
    assert tables, "a table of wrong rows for the evaluations that got some wrong"
    for digest, table in tables:
        evaluation = next(e for e in found if e.digest == digest)  # one log may serve two evaluations
        assert read_rows(evaluation, store.read_bytes) is None and len(evaluation.rows) == evaluation.measurement.n
        worst = evaluation.worst()
        assert 0 < len(worst) <= 5 and table.count('<tr class="bad">') == len(worst)
        assert all(f"<td>{htmlmod.escape(r.id)}</td>" in table for r in worst)
    assert "Worst-scored rows" in text and "not readable here" not in text
    unreadable = render_run_page(first_run(runs.tuned), picked, outcome)
    assert "no artifact store is readable here" in unreadable and 'class="grid samples"' not in unreadable


def test_a_halted_run_says_what_to_relax_and_what_was_tried(runs: Runs) -> None:
    text, picked, _ = page(runs.halted)
    (halt,) = of(picked, WorkflowHalted)
    assert '<section id="halt"' in text and "Halted: " in text
    for advice in halt.advice:
        assert htmlmod.escape(advice) in text, advice
    assert f"weightflow resume {halt.deployment}" in text


def test_a_later_runs_halt_is_not_on_an_earlier_runs_page(runs: Runs) -> None:
    """Both runs target the deployment `scripted`; on one stream the halted run comes second."""
    stream = runs.tuned + runs.halted
    earlier, outcome = run_scope(stream, first_run(runs.tuned))
    assert outcome == "succeeded" and not of(earlier, WorkflowHalted)
    assert "Deployed: " in render_run_page(first_run(runs.tuned), earlier, outcome)
    later, _ = run_scope(stream, first_run(runs.halted))
    assert of(later, WorkflowHalted) and not set(map(id, later)) & set(map(id, runs.tuned))
    whole = deployment_scope(stream, "scripted")
    assert of(whole, WorkflowHalted) and len(whole) > len(earlier)


def _generation_event() -> CandidateBenchmarked:
    m = Measurement(
        score=0.78,
        latency_ms_p50=40,
        latency_ms_p95=61,
        cost_per_1k_usd=0.002,
        throughput_per_s=9,
        n=120,
        metric="exact_match",
        interval=Interval(low=0.7, high=0.85, method="wilson"),
        extra={"exact_match": 0.78, "contains": 0.9, "chrf": 55.2, "ttft_ms_p50": 12.0},
    )
    model = ModelArtifact(
        candidate="smollm2", tree_digest="a" * 64, base_tree_digest="a" * 64, params=134_500_000, size_class="s"
    )
    verdict = Verdict(misses=[Miss(kind="quality", observed=0.78, limit=0.8, detail="exact_match")])
    return CandidateBenchmarked(run_id=uuid4(), model=model, measurement=m, verdict=verdict, quality_gap=0.02)


def test_a_generation_run_reports_its_own_metrics_not_nan() -> None:
    event = _generation_event()
    text = render(event.run_id, [event], "in progress")
    assert "nan" not in text.lower()
    assert "exact_match 0.780 [0.700, 0.850]" in text and "contains 0.900" in text and "chrf 55.200" in text
    page_text = render_run_page(event.run_id, [event], "in progress")
    assert ">nan<" not in page_text and "contains 0.900" in page_text


def test_a_section_with_nothing_to_show_says_so_in_one_line() -> None:
    event = _generation_event()
    text = render_run_page(event.run_id, [event], "in progress")
    for line in (
        "No requirements were accepted",
        "No memory budget was computed",
        "No quantized variant",
        "No LoRA adapter was trained",
        "Nothing was registered",
        "No canary has run yet",
    ):
        assert line in text, line
    for div in ("memory-plot", "quantization-plot", "lora-loss-0", "canary-plot"):
        assert f'id="{div}"' not in text, div


async def _publish(url: str, events: list[Event]) -> None:
    from weightflow.shared.settings import Settings

    async with Client(Settings(nats_url=url, trace_file=False)) as client:
        for e in events:
            await client.publish(e)


def test_the_cli_writes_a_run_page_and_a_deployment_page(runs: Runs, tmp_path: Path, nats_server: EmbeddedNats) -> None:
    asyncio.run(_publish(nats_server.url, runs.tuned))
    env = {"WEIGHTFLOW_NATS_URL": nats_server.url, "WEIGHTFLOW_HOME": str(tmp_path / "home")}
    out = tmp_path / "run.html"
    result = CliRunner().invoke(cli, ["report", str(first_run(runs.tuned))[:8], "--html", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert 'id="canary-plot"' in out.read_text() and "Decision trail" in out.read_text()
    # the runbook lives in the artifact store, which this test does not have: a line, not a crash
    assert "Runbook: the runbook" in out.read_text() and "not readable here" in out.read_text()
    deployment = tmp_path / "deployment.html"
    result = CliRunner().invoke(cli, ["report", "--deployment", "scripted", "--html", str(deployment)], env=env)
    assert result.exit_code == 0, result.output
    assert "Deployment scripted" in deployment.read_text()
    result = CliRunner().invoke(cli, ["report", "--deployment", "scripted"], env=env)
    assert result.exit_code != 0 and "add --html PATH" in str(result.exception or result.output)


def _without_samples(e: Event) -> Event:
    names = [n for n in type(e).model_fields if isinstance(getattr(e, n), Measurement)]
    return e.model_copy(update={n: getattr(e, n).model_copy(update={"samples": None}) for n in names})


def test_the_cli_shows_a_runs_sample_logs(runs: Runs, tmp_path: Path, nats_server: EmbeddedNats) -> None:
    assert runs.store is not None
    old = [_without_samples(e) for e in runs.halted]  # the halted run as a release before sample logs made it
    asyncio.run(_publish(nats_server.url, [*runs.tuned, *old]))
    env = {"WEIGHTFLOW_NATS_URL": nats_server.url, "WEIGHTFLOW_ARTIFACTS_DIR": str(runs.store.root),
           "WEIGHTFLOW_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    run = str(first_run(runs.tuned))[:8]
    every = CliRunner().invoke(cli, ["samples", run], env=env)
    assert every.exit_code == 0, every.output
    for line in ("benchmark: a fp32", "variant benchmark: a int8", "tuned with its adapter: a int8 +adapter",
                 "registration canary: a int8 +adapter", "canary at ", "canary-0001", "eval-0001"):
        assert line in every.output, line
    wrong = CliRunner().invoke(cli, ["samples", run, "--wrong", "--candidate", "a/int8"], env=env)
    assert wrong.exit_code == 0, wrong.output
    assert "a fp32" not in wrong.output and "32 of 640 rows wrong" in wrong.output and "eval-0001" not in wrong.output
    assert "eval-0640" in wrong.output, "the scripted 0.95 gets the last rows wrong"
    unknown = CliRunner().invoke(cli, ["samples", run, "--candidate", "zzz"], env=env)
    assert unknown.exit_code != 0 and "a/int8" in str(unknown.exception)
    none = CliRunner().invoke(cli, ["samples", str(old[0].run_id)], env=env)
    assert none.exit_code != 0 and "no sample logs" in str(none.exception) and "before sample logs" in str(
        none.exception)


# -- in a real browser ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    yield from chromium()


def open_page(driver: Any, path: Path, plots: int) -> None:
    driver.get(path.as_uri())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        drawn = driver.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length")
        if drawn >= plots and driver.execute_script("return document.readyState") == "complete":
            return
        time.sleep(0.2)
    raise AssertionError(f"{plots} plots were not drawn in 30 s")


def drawn_points(driver: Any) -> dict[str, tuple[int, int]]:
    """Per plot: the scatter markers and the bars the browser drew (SVG elements, not the input data)."""
    counts: dict[str, list[int]] = driver.execute_script(
        "const out = {}; document.querySelectorAll('.js-plotly-plot').forEach(gd => {"
        " out[gd.id] = [gd.querySelectorAll('.scatterlayer .point').length,"
        " gd.querySelectorAll('.barlayer .point').length]; }); return out;"
    )
    return {k: (v[0], v[1]) for k, v in counts.items()}


@pytest.mark.browser
def test_the_tuned_run_in_a_browser(runs: Runs, driver: Any, tmp_path: Path) -> None:
    text, picked, _ = page(runs.tuned)
    path = tmp_path / "tuned.html"
    path.write_text(text)
    open_page(driver, path, plots=6)
    assert console_errors(driver) == []
    measured = benchmarked(picked)
    budgets = of(picked, MemoryBudgetComputed)
    variants = [e for e in measured if isinstance(e, VariantBenchmarked)]
    bases = {v.model.base_tree_digest for v in variants}
    canaries = [e for e in picked if isinstance(e, CanaryPassed | CanaryFailed) and e.measurement is not None]
    assert of(picked, AdapterTrained) and of(picked, TuningGated) and len(canaries) >= 2
    expected = {
        "candidates-plot": (2 * len(measured), 0),  # each model against latency and against cost
        "memory-plot": (sum(measured_peak_mb(b) is not None for b in budgets), 4 * len(budgets)),
        "quantization-plot": (0, 2 * (len(variants) + len(bases))),
        "lora-loss-0": (len(of(picked, AdapterTrained)[0].loss_curve), 0),  # the loss at every step
        "gate-0": (0, 4),
        "canary-plot": (len(canaries), 0),
    }
    assert drawn_points(driver) == expected
    steps = driver.execute_script(
        "return Array.from(document.querySelectorAll('#decision-trail li'))"
        ".map(li => [li.dataset.type, li.dataset.at, li.querySelector('b').innerText])"
    )
    assert [s[0] for s in steps] == [s.event_type for s in trail(picked)]
    assert [s[1] for s in steps] == sorted(s[1] for s in steps), "in the order they were made"
    actions = [s[2] for s in steps]
    assert actions.index("canary failed") < actions.index("reroute") < actions.index("tune") < actions.index("gate")
    full_screenshot(driver, artifacts_dir(tmp_path) / "report-tuned.png")


@pytest.mark.browser
def test_a_halted_run_in_a_browser_shows_the_halt_and_what_to_relax(runs: Runs, driver: Any, tmp_path: Path) -> None:
    text, picked, _ = page(runs.halted)
    path = tmp_path / "halted.html"
    path.write_text(text)
    open_page(driver, path, plots=4)
    assert console_errors(driver) == []
    (halt,) = of(picked, WorkflowHalted)
    assert driver.find_element("id", "outcome").text.startswith("Halted: ")
    advice = [li.text for li in driver.find_elements("css selector", "#halt-advice li")]
    assert advice == halt.advice and any("data.canary" in a for a in advice)
    assert driver.find_element("id", "halt").is_displayed()
    full_screenshot(driver, artifacts_dir(tmp_path) / "report-halted.png")


@pytest.mark.browser
def test_a_deployment_page_in_a_browser_has_every_canary_of_its_runs(runs: Runs, driver: Any, tmp_path: Path) -> None:
    picked = deployment_scope(runs.tuned, "scripted")
    path = tmp_path / "deployment.html"
    path.write_text(render_deployment_page("scripted", picked))
    open_page(driver, path, plots=6)
    assert console_errors(driver) == []
    canaries = [e for e in runs.tuned if isinstance(e, CanaryPassed | CanaryFailed) and e.measurement is not None]
    assert drawn_points(driver)["canary-plot"] == (len(canaries), 0)
    assert driver.find_element("tag name", "h1").text == "Deployment scripted"
    full_screenshot(driver, artifacts_dir(tmp_path) / "report-deployment.png")


def test_the_markdown_report_shows_each_evaluations_worst_rows_from_its_sample_log(runs: Runs) -> None:
    """`weightflow report` (Markdown) shows what the page shows of the rows: each evaluation, how many rows it got
    wrong and the lowest-scored ones, read from the sample logs in the store; without a store, where they are."""
    from weightflow.evaluations import evaluations, read_rows

    assert runs.store is not None
    picked, outcome = run_scope(runs.tuned, first_run(runs.tuned))
    text = render(first_run(runs.tuned), picked, outcome, runs.store.read_bytes)
    found, _ = evaluations(picked)
    assert found and "## Samples" in text
    for evaluation in found:
        assert f"### {evaluation.title}" in text
        assert read_rows(evaluation, runs.store.read_bytes) is None
        assert f"{len(evaluation.wrong())} of {len(evaluation.rows)} rows wrong" in text
        for row in evaluation.worst():
            assert f"| {row.id} | {row.score:.3g} |" in text, row.id
    assert any(evaluation.worst() for evaluation in found), "the scripted run gets some rows wrong"
    unread = render(first_run(runs.tuned), picked, outcome)
    assert f"{len(found)} evaluations keep their rows; `weightflow samples RUN` shows them." in unread
    broken = render(first_run(runs.tuned), picked, outcome, lambda digest: b"\x00 not a sample log")
    assert "is not readable here" in broken and "Traceback" not in broken
