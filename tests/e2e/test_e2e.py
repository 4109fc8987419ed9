"""The whole workflow through six service processes on a real nats-server, SQLite and real weights.

The shipped example's first run is a module fixture that the tests reading it share; a test that changes
a deployment's state (a change, a rollback) works on a deployment of its own, so any test runs alone. The
same first run on PostgreSQL is a test of its own (`-m postgres`), on a stack of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import CandidateBenchmarked, SelectionDecided, VariantBenchmarked
from weightflow.contracts.fitting import FitCompleted, MemoryBudgetComputed
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, CanaryRequested, DriftDetected
from weightflow.contracts.registry import DeploymentPromoted, ModelRegistered
from weightflow.contracts.requirements import RequirementsAccepted, RequirementsRejected, RequirementsSubmitted
from weightflow.contracts.tuning import TuningGated, TuningSkipped
from weightflow.contracts.workflow import WorkflowRerouted
from weightflow.pages import run_scope
from weightflow.pages.figures import benchmarked
from weightflow.pages.trail import trail
from weightflow.shared.artifacts import sha256_file
from weightflow.shared.modeling.stored import read_manifest
from weightflow.submission import prepare

from ..conftest import EXAMPLE_DIR, ROOT, LiveStack, example_script
from ..report_checks import assert_run_report

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def types(events: list[Event]) -> list[str]:
    return [e.type_name() for e in events]


def of(events: list[Event], cls: type[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, cls)]


def example_run(live: LiveStack) -> list[Event]:
    event = prepare(EXAMPLE_DIR / "requirements.yaml", live.store).event
    tracker = live.run(event)
    assert tracker.outcome == "succeeded", live.why(tracker)
    return tracker.events


@pytest.fixture(scope="module")
def first_run(live_stack: LiveStack) -> list[Event]:
    return example_run(live_stack)


def test_example_reaches_a_monitored_deployment(first_run: list[Event], live_stack: LiveStack) -> None:
    assert_a_monitored_deployment(first_run, live_stack)
    assert_sample_logs(first_run, live_stack)


def assert_sample_logs(first_run: list[Event], live_stack: LiveStack) -> None:
    """Every measurement names its stored sample log, the live canary its own; `weightflow samples` shows them."""
    from typer.testing import CliRunner

    from weightflow.cli import app as cli
    from weightflow.shared.sample_logs import load

    measured = [(e, m) for e in first_run for m in (getattr(e, n) for n in type(e).model_fields)
                if isinstance(m, Measurement)]
    assert measured and all(m.samples is not None for _, m in measured), [e.type_name() for e, m in measured]
    for _, m in measured:
        assert m.samples is not None and len(load(live_stack.store, m.samples)) == m.n
    assert next(e for e in first_run if isinstance(e, CanaryPassed)).measurement.samples is not None
    first = next(e for e in first_run if isinstance(e, CandidateBenchmarked)).measurement
    assert first.samples is not None
    wrong = [r for r in load(live_stack.store, first.samples) if r.wrong]
    assert len(wrong) == round((1 - first.score) * first.n) > 0
    env = {"WEIGHTFLOW_HOME": str(live_stack.settings.home), "WEIGHTFLOW_NATS_URL": str(live_stack.settings.nats_url),
           "COLUMNS": "200"}
    result = CliRunner().invoke(cli, ["samples", str(first_run[0].run_id)[:8], "--wrong"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{len(wrong)} of {first.n} rows wrong" in result.output and wrong[0].id in result.output


def assert_a_monitored_deployment(first_run: list[Event], live_stack: LiveStack) -> None:
    seq = types(first_run)
    fitted = of(first_run, FitCompleted)[0].type_name()  # fitting.needs_tuning when it went on to tuning
    assert fitted == ("fitting.needs_tuning" if of(first_run, FitCompleted)[0].next_stage == "tuning"
                      else "fitting.completed")
    # every stage, in causal order
    for earlier, later in [("requirements.accepted", "benchmark.candidate_benchmarked"),
                           ("benchmark.candidate_benchmarked", "benchmark.selection_decided"),
                           ("benchmark.selection_decided", "fitting.memory_budget_computed"),
                           ("fitting.memory_budget_computed", fitted),
                           (fitted, "registry.model_registered"),
                           ("registry.model_registered", "registry.deployment_promoted"),
                           ("registry.deployment_promoted", "monitoring.canary_passed")]:
        assert seq.index(earlier) < seq.index(later), seq
    benchmarked = of(first_run, CandidateBenchmarked)
    assert {e.model.candidate for e in benchmarked} >= {"minilm-l3", "minilm-l6"}
    assert benchmarked[0].model.size_class == "xs", "smallest size class first"
    selection = of(first_run, SelectionDecided)[0]
    assert selection.decisions and selection.decisions[-1].action in {"select", "tune"}
    budgets = [e.budget for e in of(first_run, MemoryBudgetComputed)]
    assert not budgets[0].fits and budgets[0].variant == "fp32"
    assert budgets[-1].fits and budgets[-1].variant == "int8"
    rebench = of(first_run, VariantBenchmarked)
    assert rebench and rebench[0].model.variant == "int8", "the quantized variant was re-benchmarked"
    assert seq.index("benchmark.variant_benchmarked") < seq.index(fitted)
    fit = of(first_run, FitCompleted)[0]
    assert fit.model.variant == "int8" and fit.next_stage == ("tuning" if fit.quality_gap > 0 else "registry")
    if fit.quality_gap > 0:
        gated = of(first_run, TuningGated)[0]
        assert gated.passed and gated.task_score >= gated.context.requirements.quality.threshold
    assert not of(first_run, TuningSkipped)
    registered = of(first_run, ModelRegistered)[0]
    assert registered.canary_baseline.n == 120 and registered.canary_baseline.interval is not None
    # every event names its cause, except the submission that started it
    by_id = {e.event_id: e for e in live_stack.history()}
    for e in first_run:
        if not isinstance(e, RequirementsSubmitted):
            assert e.causation_id in by_id, e.type_name()


def test_every_gate_says_pass_miss_or_inconclusive_and_pairs_what_it_compares(first_run: list[Event],
                                                                               live_stack: LiveStack) -> None:
    """#23 part 2 on a real run: each gate's verdict carries its quality call (interval, rows, outcome); the
    selected candidate is compared with its size-class rival, the int8 variant with the fp32 model, the adapter
    with its base, each paired on the same eval rows from their sample logs; and the CLI prints them."""
    req = of(first_run, RequirementsAccepted)[0].context.requirements
    gates = [*of(first_run, CandidateBenchmarked), *of(first_run, VariantBenchmarked), *of(first_run, TuningGated),
             *of(first_run, CanaryPassed)]
    for e in gates:
        call = e.verdict.quality  # type: ignore[attr-defined]
        assert call is not None and call.outcome in ("pass", "miss", "inconclusive"), e.type_name()
        assert call.n == e.measurement.n and call.low <= call.score <= call.high  # type: ignore[attr-defined]
        assert call.passed == (not any(m.kind == "quality" for m in e.verdict.misses))  # type: ignore[attr-defined]
    assert of(first_run, CanaryPassed)[0].verdict.quality.decided_on == "upper_bound"  # type: ignore[union-attr]
    assert of(first_run, CandidateBenchmarked)[0].verdict.quality.decided_on == req.quality.decide_on  # type: ignore[union-attr]

    selection = of(first_run, SelectionDecided)[0]
    (rival,) = selection.comparisons  # minilm-l6 (s) against minilm-l3 (xs), which it was chosen over
    assert (rival.baseline, rival.candidate) == ("minilm-l3 fp32", "minilm-l6 fp32") and rival.n == 640
    assert rival.finding == "better" and rival.difference > 0
    fit = of(first_run, FitCompleted)[0]
    assert fit.comparison is not None and fit.comparison.baseline.endswith("fp32")
    assert fit.comparison.candidate.endswith("int8") and fit.comparison.method == "mcnemar"
    assert abs(fit.comparison.difference - (fit.measurement.score - selection.measurement.score)) < 1e-9
    gated = of(first_run, TuningGated)[0]
    assert gated.comparison is not None and gated.comparison.finding == "better", gated.comparison
    assert gated.comparison.wins > gated.comparison.losses and gated.comparison.interval.low > 0

    from typer.testing import CliRunner

    from weightflow.cli import app as cli

    env = {"WEIGHTFLOW_HOME": str(live_stack.settings.home), "WEIGHTFLOW_NATS_URL": str(live_stack.settings.nats_url),
           "COLUMNS": "250"}
    shown = CliRunner().invoke(cli, ["status", str(first_run[0].run_id)], env=env)
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("paired:") >= 3 and "McNemar p =" in shown.output


def test_registered_checksums_match_the_files_on_disk(first_run: list[Event], live_stack: LiveStack) -> None:
    registered = of(first_run, ModelRegistered)[0]
    assert registered.checksums
    for role, digest in registered.checksums.items():
        assert sha256_file(live_stack.store.path_of(digest)) == digest, role
    manifest = read_manifest(live_stack.store, registered.manifest_id)
    assert manifest.model.files["model.safetensors"] == registered.checksums["model/model.safetensors"]
    assert manifest.quantization == "int8" and manifest.base.tree_digest != manifest.model.tree_digest
    assert manifest.canary_baseline == registered.canary_baseline
    runbook = live_stack.store.read_bytes(registered.runbook_digest).decode()
    for section in ("## 1. Load", "## 2. Serve", "## 3. Roll back", registered.manifest_id):
        assert section in runbook
    if manifest.adapter is not None:
        assert manifest.adapter_train_data_digest == manifest.data.train


@pytest.fixture
def driver() -> Iterator[Any]:
    """A headless Chromium for one test, quit however the test ends (skipped where Chromium is absent)."""
    from ..pages_fixtures import chromium

    yield from chromium()


@pytest.mark.browser
def test_the_report_of_the_run_in_a_browser(first_run: list[Event], live_stack: LiveStack, tmp_path: Path,
                                            driver: Any) -> None:
    """The run's page, written by the CLI from the real stack and opened in a real headless Chromium: what the
    unit lane's pages show holds for a run the services made, runbook from the artifact store included."""
    from ..integration.test_report import drawn_points, open_page
    from ..pages_fixtures import artifacts_dir, console_errors, full_screenshot

    run_id = first_run[0].run_id
    assert_run_report(live_stack, run_id, tmp_path)
    picked, outcome = run_scope(live_stack.history(), run_id)
    assert outcome == "succeeded"
    open_page(driver, tmp_path / f"report-{run_id}.html", plots=4)
    assert console_errors(driver) == []
    points = drawn_points(driver)
    assert points["candidates-plot"] == (2 * len(benchmarked(picked)), 0)
    canaries = [e for e in picked if isinstance(e, CanaryPassed) and e.measurement is not None]
    assert points["canary-plot"][0] == len(canaries) >= 1
    steps = driver.execute_script(
        "return Array.from(document.querySelectorAll('#decision-trail li')).map(li => li.dataset.type)")
    assert steps == [s.event_type for s in trail(picked)]
    assert driver.find_element("id", "outcome").text.startswith("Deployed: ")
    # the paired comparisons are on the page, in the trail and the tuning section
    page = driver.find_element("tag name", "body").text
    assert "paired" in page and "McNemar" in page
    full_screenshot(driver, artifacts_dir(tmp_path) / "report-real-run.png")


def test_invalid_requirements_are_rejected_on_the_bus(first_run: list[Event], live_stack: LiveStack) -> None:
    event = prepare(EXAMPLE_DIR / "requirements.yaml", live_stack.store).event
    bad = event.model_copy(update={"document": event.document.replace("threshold: 0.", "threshold: 9."),
                                   "event_id": uuid4(), "run_id": uuid4()})
    tracker = live_stack.run(bad, timeout=60)
    rejected = of(tracker.events, RequirementsRejected)
    assert tracker.outcome == "failed" and rejected and "quality.threshold" in rejected[0].errors[0]


def test_changed_requirements_reroute_through_stage_one(first_run: list[Event], live_stack: LiveStack,
                                                        example_dir: Path) -> None:
    text = (example_dir / "requirements.yaml").read_text()
    (example_dir / "requirements.yaml").write_text(text.replace("per_1k_tasks_usd: 0.05", "per_1k_tasks_usd: 0.04"))
    changed = prepare(example_dir / "requirements.yaml", live_stack.store, changed=True).event
    tracker = live_stack.run(changed)
    assert tracker.outcome == "succeeded", live_stack.why(tracker)
    reroute = of(tracker.events, WorkflowRerouted)
    assert reroute and reroute[0].from_stage == "requirements.changed" and reroute[0].new_run_id == changed.run_id
    accepted = of(tracker.events, RequirementsAccepted)[0]
    assert accepted.context.version == 2 and accepted.context.requirements.cost.per_1k_tasks_usd == 0.04


def test_corrupt_live_artifact_fails_the_canary_and_reroutes(first_run: list[Event], live_stack: LiveStack) -> None:
    promoted = [e for e in live_stack.history() if isinstance(e, DeploymentPromoted)][-1]
    manifest = read_manifest(live_stack.store, promoted.manifest_id)
    weights = live_stack.store.path_of(manifest.model.files["model.safetensors"])
    weights.chmod(0o644)
    with weights.open("r+b") as fh:
        fh.seek(weights.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    tracker = live_stack.run(CanaryRequested(run_id=uuid4(), deployment=promoted.deployment),
                             done=lambda e: isinstance(e, CanaryPassed))
    assert tracker.outcome == "succeeded", live_stack.why(tracker)
    failed = of(tracker.events, CanaryFailed)
    assert failed and "integrity" in failed[0].reasons[0]
    assert any(d.kind == "integrity" for d in of(tracker.events, DriftDetected))
    reroute = of(tracker.events, WorkflowRerouted)[0]
    assert reroute.to_stage == "benchmark"
    assert of(tracker.events, ModelRegistered), "the rerouted run registered a healthy model again"
    assert sha256_file(weights) == manifest.model.files["model.safetensors"], "the store healed the object"


@pytest.fixture(scope="module")
def priority_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The second example as a team would have it: its two classifier checkpoints made by its script."""
    import shutil

    source = ROOT / "examples" / "ticket-priority"
    folder = tmp_path_factory.mktemp("priority") / "ticket-priority"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("models", "__pycache__"))
    example_script(source / "make_models.py").main(folder / "models")
    return folder


def test_user_classifier_checkpoints_run_through_all_six_stages(live_stack: LiveStack,
                                                                 priority_example: Path) -> None:
    """path: candidates with their own heads (text-classification, label_map, macro-F1): stored as trees,
    benchmarked smallest first, the larger one selected, registered with its checksum, watched."""
    prepared = prepare(priority_example / "requirements.yaml", live_stack.store)
    uploaded = {c.key: c for c in prepared.event.candidates}
    assert set(uploaded) == {"priority-l3", "priority-l6"} and {c.source for c in uploaded.values()} == {"path"}
    tracker = live_stack.run(prepared.event)
    assert tracker.outcome == "succeeded", live_stack.why(tracker)
    benchmarked = of(tracker.events, CandidateBenchmarked)
    assert [e.model.candidate for e in benchmarked] == ["priority-l3", "priority-l6"], "xs first, then s"
    for e in benchmarked:
        assert e.measurement.metric == "macro_f1" and {"accuracy", "recall/urgent", "precision/low"} <= set(
            e.measurement.extra)
    selection = of(tracker.events, SelectionDecided)[0]
    assert selection.model.candidate == "priority-l6" and [d.action for d in selection.decisions] == [
        "size_up", "select"]
    registered = of(tracker.events, ModelRegistered)[0]
    manifest = read_manifest(live_stack.store, registered.manifest_id)
    assert manifest.source == "path" and manifest.base.tree_digest == uploaded["priority-l6"].tree_digest
    assert manifest.requirements.task.type == "text-classification" and manifest.quantization is None
    assert of(tracker.events, CanaryPassed)

    from typer.testing import CliRunner

    from weightflow.cli import app as cli

    out = priority_example / "report.md"
    env = {"WEIGHTFLOW_HOME": str(live_stack.settings.home), "WEIGHTFLOW_NATS_URL": str(live_stack.settings.nats_url)}
    result = CliRunner().invoke(cli, ["report", str(prepared.event.run_id), "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    report = out.read_text()
    for part in ("Outcome: **succeeded**", "| priority-l3 | fp32 | xs |", "urgent P / R", "**size_up**",
                 "## Memory budget", "## Registry", "## Canaries"):
        assert part in report, part
    page = assert_run_report(live_stack, prepared.event.run_id, priority_example)  # and as HTML
    assert "macro_f1" in page and "priority-l6" in page
