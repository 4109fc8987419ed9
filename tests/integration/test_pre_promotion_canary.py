"""Never promote what already failed (issue 23, part 1): the registration baseline is a canary run before
going live. A release whose baseline fails the canary's rule is registered but never promoted, the live
release keeps serving, and the failure goes to the loop-back; when every candidate passes the eval set and
fails the canary set, the loop halts at once with the data finding instead of spending its budget.

The unit lane (all six services' real handlers, tiny real checkpoints, scripted scores), plus the pure rules.
"""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from sqlmodel import Session

from weightflow.contracts.measurement import Measurement
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, DeployedModel
from weightflow.contracts.registry import DeploymentPromoted, ModelRegistered, RollbackCommanded, RolledBack
from weightflow.contracts.requirements_doc import parse_requirements
from weightflow.contracts.verdict import Miss, Verdict
from weightflow.contracts.workflow import Attempt, Ending, WorkflowHalted, WorkflowRerouted
from weightflow.render import summary
from weightflow.services.registry.tables import DeploymentRecord
from weightflow.services.requirements import routing

from ..unit.test_workflow_unit import Workflow, build_workflow, of


@pytest.fixture
def workflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workflow:
    return build_workflow(tmp_path, monkeypatch)


def live_manifest(workflow: Workflow) -> str | None:
    with Session(workflow.runner.engine) as session:
        record = session.get(DeploymentRecord, "scripted")
        return record.live if record else None


def test_first_release_whose_canary_set_disagrees_never_goes_live(workflow: Workflow) -> None:
    """No model live yet: every candidate passes eval and fails the canary set; nothing is promoted."""
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.3, b_canary=0.25)
    events = workflow.submit()
    registered = of(events, ModelRegistered)
    failed = of(events, CanaryFailed)
    assert len(registered) == 2, "registered, so the evidence is kept"
    assert [e.model.candidate for e in failed] == ["a", "b"] and all(e.before_promotion for e in failed)
    assert {e.manifest_id for e in failed} == {e.manifest_id for e in registered}
    assert all(e.eval_measurement is not None and e.eval_measurement.score >= 0.8 for e in failed)
    assert not of(events, DeploymentPromoted) and live_manifest(workflow) is None
    assert not of(events, CanaryPassed), "nothing went live, so no live canary ran"
    (halted,) = of(events, WorkflowHalted)
    assert "every candidate passed the eval set and failed the canary set" in halted.reason
    assert [a.ending for a in halted.attempts] == [Ending.FAILED_BEFORE_PROMOTION] * 2
    assert all(a.canary_disagrees_with_eval for a in halted.attempts)
    finding = next(a for a in halted.advice if "data.canary" in a)
    assert "drawn like data.eval" in finding and "a, b" in finding
    assert len(of(events, WorkflowRerouted)) == 1, "halted as soon as every candidate was known to disagree"
    said = summary(failed[0])  # what `weightflow status` shows
    assert "before promotion" in said and "not promoted" in said and "on the eval set" in said, said


def test_a_later_release_that_fails_before_promotion_leaves_the_live_one_serving(workflow: Workflow) -> None:
    """A good v1 is live; v2's canary set disagrees with its eval set: v1 keeps serving, no rollback needed."""
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95)
    workflow.submit()
    first = workflow.live()
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.3, b_canary=0.3)
    events = workflow.submit(workflow.requirements(quality__threshold=0.81), changed=True)
    assert [e.before_promotion for e in of(events, CanaryFailed)] == [True, True]
    assert not of(events, DeploymentPromoted) and not of(events, RolledBack)
    assert live_manifest(workflow) == first == workflow.live(), "the previous live deployment keeps serving"
    (halted,) = of(events, WorkflowHalted)
    assert halted.requirements_version == 2 and any("data.canary" in a for a in halted.advice)
    # the live v1 release is still watched: its canary still runs and passes
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95)
    (passed,) = of(workflow.canary(), CanaryPassed)
    assert passed.manifest_id == first


def test_one_candidate_failing_before_promotion_reroutes_to_the_next_without_going_live(workflow: Workflow) -> None:
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.3, b_canary=0.9)
    events = workflow.submit()
    (failed,) = of(events, CanaryFailed)
    assert failed.before_promotion and failed.model.candidate == "a"
    (reroute,) = of(events, WorkflowRerouted)
    assert reroute.failed is not None and reroute.failed.candidate == "a"
    promoted = of(events, DeploymentPromoted)
    assert promoted and failed.manifest_id not in {p.manifest_id for p in promoted}, "a is never put live"
    assert of(events, CanaryPassed)[-1].model.candidate == "b" and not of(events, WorkflowHalted)


def test_the_registry_rolls_back_on_the_loop_backs_command_not_on_its_own_reading(workflow: Workflow) -> None:
    """One owner decides: the loop-back commands the rollback of a live release that failed; the registry only
    finds where to go. A failure before promotion commands nothing (nothing went live)."""
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95)
    workflow.submit()
    first = workflow.live()
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.3, b_canary=0.95)
    workflow.canary()
    second = workflow.live()
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.3)
    events = workflow.canary()
    (failed,) = of(events, CanaryFailed)
    (command,) = of(events, RollbackCommanded)
    assert command.causation_id == failed.event_id and command.failed_manifest_id == second
    (rolled,) = of(events, RolledBack)
    assert rolled.causation_id == command.event_id and rolled.to_manifest_id == first
    # a replayed CanaryFailed reaches the registry no more: it neither rolls back nor answers
    workflow.runner.publish(failed.model_copy(update={"event_id": uuid4()}))
    assert not of(workflow.settle(), RolledBack)


def test_no_rollback_is_commanded_for_an_outage_or_before_promotion() -> None:
    assert routing.rollback_of(_failed("a", 0.3, 0.95, before=True)) is None
    live = _failed("a", 0.3, None, before=False)
    command = routing.rollback_of(live)
    assert command is not None and command.kind == "quality" and "canary failed" in command.reason
    assert routing.rollback_of(live.model_copy(update={"kind": "unreachable"})) is None


# -- the pure rules -------------------------------------------------------------------------------------------


def _measured(score: float) -> Measurement:
    return Measurement(
        metric="accuracy",
        score=score,
        n=200,
        latency_ms_p50=1.0,
        latency_ms_p95=1.0,
        cost_per_1k_usd=0.0,
        throughput_per_s=100.0,
    )


def _failed(candidate: str, canary: float, chosen_on: float | None, *, before: bool = True) -> CanaryFailed:
    return CanaryFailed(
        run_id=uuid4(),
        deployment="d",
        manifest_id=f"m-{candidate}",
        manifest_run_id=uuid4(),
        model=DeployedModel(candidate=candidate, variant="int8", requirements_version=1),
        kind="quality",
        verdict=Verdict(misses=[Miss(kind="quality", observed=canary, limit=0.8, detail="canary accuracy")]),
        measurement=_measured(canary),
        before_promotion=before,
        eval_measurement=_measured(chosen_on) if chosen_on is not None else None,
    )


def test_a_canary_gap_tuning_may_close_is_not_a_disagreement_of_the_data(workflow: Workflow) -> None:
    req = parse_requirements((workflow.folder / "requirements.yaml").read_text())
    assert req.quality.tunable_gap == 0.15
    assert routing.disagrees_with_eval(_failed("a", 0.3, 0.95), req)
    assert not routing.disagrees_with_eval(_failed("a", 0.7, 0.95), req), "within tunable_gap: tuning may close it"
    assert not routing.disagrees_with_eval(_failed("a", 0.3, 0.7), req), "it did not pass the eval set either"
    assert not routing.disagrees_with_eval(_failed("a", 0.3, None, before=False), req), "live: no eval score"


def test_the_loop_halts_only_when_every_candidate_disagrees() -> None:
    def attempt(candidate: str, disagrees: bool) -> Attempt:
        return Attempt(
            run_id=uuid4(),
            candidate=candidate,
            reason="r",
            ending=Ending.FAILED_BEFORE_PROMOTION,
            canary_disagrees_with_eval=disagrees,
        )

    assert routing.every_candidate_disagrees(["a", "b"], [attempt("a", True), attempt("b", True)])
    assert not routing.every_candidate_disagrees(["a", "b"], [attempt("a", True)])
    assert not routing.every_candidate_disagrees(["a", "b"], [attempt("a", True), attempt("b", False)])
    assert not routing.every_candidate_disagrees([], [attempt("a", True)])
    event = _failed("b", 0.3, 0.95)
    decision = routing.on_canary_failure(
        event,
        live_version=1,
        reroutes=0,
        max_reroutes=3,
        halted=False,
        in_flight=None,
        exclusions=[],
        candidates=["a", "b"],
        attempts=[attempt("a", True), attempt("b", True)],
    )
    assert isinstance(decision, routing.Halt) and "no model was promoted" in decision.reason
    decision = routing.on_canary_failure(
        event,
        live_version=1,
        reroutes=0,
        max_reroutes=3,
        halted=False,
        in_flight=None,
        exclusions=[],
        candidates=["a", "b", "c"],
        attempts=[attempt("a", True), attempt("b", True)],
    )
    assert isinstance(decision, routing.Reroute) and decision.attempt == 1


@pytest.mark.parametrize(("reason", "ending"), [
    ("fit failed: nothing fits 128 MB", Ending.FIT_FAILED), ("no candidate passed: all too slow", Ending.NO_CANDIDATE),
    ("canary failed (quality): accuracy 0.5", Ending.CANARY_FAILED), ("not promoted: superseded", Ending.NOT_PROMOTED),
    ("dead-lettered by fitting (poison): boom", Ending.DEAD_LETTERED), ("something else", None)])
def test_an_attempt_stored_before_endings_were_typed_gets_its_ending_and_the_halt_keeps_its_advice(
        reason: str, ending: Ending | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop state written by the previous release holds attempts with no ending: they are typed on read, so a
    halt after an upgrade still says that nothing untried is left (review finding)."""
    stored = Attempt.model_validate_json(f'{{"run_id": "{uuid4()}", "reason": "{reason}"}}')
    assert stored.ending == ending
    if ending in (Ending.FIT_FAILED, Ending.NO_CANDIDATE):
        req = parse_requirements(build_workflow(tmp_path, monkeypatch).requirements().read_text())
        said = routing.advice(req, [], [stored, Attempt(run_id=uuid4(), reason="r", ending=Ending.CANARY_FAILED,
                                                        canary_disagrees_with_eval=True, candidate="a")])
        assert any("no untried candidate" in line for line in said), said


# -- as a new user would: the shipped example, real models, a canary set labelled unlike the eval set --------


@pytest.mark.slow
def test_a_canary_set_labelled_unlike_the_eval_set_puts_no_model_live(tmp_path: Path) -> None:
    """The support-tickets example with its canary labels rotated (billing -> technical -> shipping -> account ->
    billing): the real MiniLM candidates pass the eval set and score near zero on the canary set."""
    import importlib
    import json
    import shutil

    from weightflow.contracts.topology import SERVICES
    from weightflow.shared.bus.inprocess import InProcessRunner
    from weightflow.shared.settings import Settings
    from weightflow.submission import prepare

    from ..conftest import EXAMPLE_DIR

    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    rotate = {"billing": "technical", "technical": "shipping", "shipping": "account", "account": "billing"}
    canary = [json.loads(line) for line in (folder / "canary.jsonl").read_text().splitlines() if line.strip()]
    (folder / "canary.jsonl").write_text("".join(json.dumps({**r, "label": rotate[r["label"]]}) + "\n" for r in canary))
    # A lighter eval set (every fourth row, all four labels) keeps real model work to a minute or two on 2 cores.
    rows = (folder / "eval.jsonl").read_text().splitlines(keepends=True)
    (folder / "eval.jsonl").write_text("".join(rows[::4]))
    services = [importlib.import_module(f"weightflow.services.{name}.app").service for name in SERVICES]
    runner = InProcessRunner(services, Settings(home=tmp_path / "home", trace_file=False, device="cpu"))
    runner.publish(prepare(folder / "requirements.yaml", runner.store).event)
    events = runner.run_until_idle()
    failed = of(events, CanaryFailed)
    assert failed and all(e.before_promotion and e.kind == "quality" for e in failed), [summary(e) for e in events]
    assert all(e.eval_measurement.score >= 0.8 > e.measurement.score for e in failed), [summary(e) for e in failed]
    assert not of(events, DeploymentPromoted), "a canary set that disagrees with the eval set never puts a model live"
    (halted,) = of(events, WorkflowHalted)
    assert any("drawn like data.eval" in advice for advice in halted.advice), halted.advice


def test_a_release_refused_before_promotion_leaves_the_live_ones_canary_gauges_and_ui_row(workflow: Workflow) -> None:
    """Operators watch the live release: a refused candidate's failed baseline must not page them (the canary
    alert reads weightflow_canary_passed) nor paint the live deployment red in `weightflow ui`."""
    from weightflow.shared import metrics
    from weightflow.ui.views import deployment_rows

    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95)
    first = workflow.submit() + workflow.canary()
    passed = of(first, CanaryPassed)[-1]  # the live release's scheduled canary
    metrics.observe_published("monitoring", passed.subject(), passed.model_dump_json().encode())
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.3, b_canary=0.3)
    second = workflow.submit(workflow.requirements(quality__threshold=0.81), changed=True)
    refused = of(second, CanaryFailed)
    assert refused and all(e.before_promotion for e in refused)
    for e in refused:
        metrics.observe_published("registry", e.subject(), e.model_dump_json().encode())
    name = passed.deployment
    assert metrics.CANARY_PASSED.labels(name)._value.get() == 1, "the live release's last canary passed"
    assert metrics.CANARY_SCORE.labels(name)._value.get() == passed.measurement.score
    assert metrics.CANARIES.labels(name, "refused_before_promotion")._value.get() == len(refused)
    (row,) = [r for r in deployment_rows([*first, *second]) if r.name == name]
    assert row.canary_tone == "good" and row.live_manifest == passed.manifest_id, row
