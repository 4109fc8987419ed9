"""Fitting decides on the measured peak: the prediction orders and rules out, the measurement rules in.

The unit tests drive the real fitting handler through the in-process runner with the scripted task, whose
peaks the test sets; the slow test measures a real tiny Llama in a process of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from weightflow.contracts.fitting import FitCompleted, FitFailed, MemoryBudgetComputed
from weightflow.contracts.monitoring import CanaryPassed
from weightflow.contracts.registry import ModelRegistered
from weightflow.contracts.requirements import TaskSpec
from weightflow.services.fitting.domain import judge_peak
from weightflow.services.fitting.peaks import peak_key
from weightflow.shared.modeling.budget import Architecture, memory_budget
from weightflow.shared.modeling.peak import PeakMeasured
from weightflow.shared.modeling.placement import PLACEMENT_FILE
from weightflow.shared.modeling.stored import load_deployment, read_manifest

from ..plugins.scripted import ScriptedRuntime
from ..unit.test_workflow_unit import build_workflow, of

MB = 2**20


def test_a_variant_predicted_to_fit_but_measured_over_budget_does_not_fit(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95, a_int8_0_peak=5.0,
                    **{"a_fp32+offload_0_peak": 4.0})
    events = workflow.submit()
    budgets = [e for e in of(events, MemoryBudgetComputed) if e.budget.variant == "int8"]
    assert budgets and budgets[0].budget.fits, "the prediction put int8 within the 3 MB budget"
    measured = budgets[0].measured
    assert measured is not None and not measured.fits and measured.peak_bytes == 5 * MB
    assert measured.error < 0 and measured.method == "scripted", "predicted below what was measured"
    failed = of(events, FitFailed)
    assert failed and "as measured at the serving shape" in failed[0].reason
    assert "then offload" in failed[0].reason and "its peak was measured at 4 MB" in failed[0].reason, \
        "the last resort was measured too, and the refusal names what it measured"
    assert any("measured peak 5.0 MB" in step and "does not fit" in step for step in failed[0].steps)
    assert not of(events, FitCompleted)


def test_when_no_scheme_fits_the_offloaded_model_is_measured_re_benchmarked_registered_and_loaded_as_fitted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last resort for real: int8 measured over the 3 MB budget, the unquantized weights offloaded beyond what
    the budget leaves (accelerate's device map, on disk for this CPU target) fit as measured; the variant is
    re-benchmarked, registered with its placement pinned by the model's checksum, and every loader (the canary, the
    runbook's `load_deployment`) runs it under the same device map."""
    workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95, a_int8_0_peak=5.0,
                    **{"a_fp32+offload_0_peak": 0.5})
    events = workflow.submit()
    (offload,) = [e for e in of(events, MemoryBudgetComputed) if e.budget.variant == "fp32+offload"]
    assert offload.measured is not None and offload.measured.fits
    assert offload.budget.weight_bytes < offload.budget.total_bytes <= offload.budget.budget_bytes
    fit = of(events, FitCompleted)[0]
    assert fit.model.variant == "fp32+offload" and fit.model.base_tree_digest != fit.model.tree_digest
    assert any("offloaded: at most" in step and "on disk" in step for step in fit.steps), fit.steps
    assert any(step.startswith("re-benchmarked fp32+offload") for step in fit.steps), "chosen only after a re-run"
    registered = of(events, ModelRegistered)[0]
    assert f"model/{PLACEMENT_FILE}" in registered.checksums, "the placement is pinned with the weights"
    store = workflow.runner.store
    manifest = read_manifest(store, registered.manifest_id)
    assert manifest.quantization is None and manifest.sharding.startswith("offloaded: at most")
    assert manifest.sharding in store.read_bytes(registered.runbook_digest).decode(), "the runbook says how"
    assert of(events, CanaryPassed), "the canary loaded and ran the offloaded model"
    loaded = load_deployment(store, manifest, device="cpu")
    assert (Path(loaded.model_dir) / PLACEMENT_FILE).is_file(), "the runbook's loader reads the same placement"


def test_an_offload_measured_over_the_budget_keeps_less_on_the_device_and_is_measured_once_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the device keeps plus what streams in from the offload: over by the excess, the placement keeps that
    much less (and a tenth more) on the device, and the second measurement decides."""
    workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95, a_int8_0_peak=5.0,
                    **{"a_fp32+offload_0_peak": 2.5})
    events = workflow.submit()
    first, second = [e for e in of(events, MemoryBudgetComputed) if e.budget.variant == "fp32+offload"]
    assert first.measured is not None and not first.measured.fits
    assert second.measured is not None and second.measured.fits
    excess = first.measured.peak_bytes - first.measured.budget_bytes
    assert first.budget.weight_bytes - second.budget.weight_bytes == pytest.approx(excess * 1.1, abs=2)
    fit = of(events, FitCompleted)[0]
    assert fit.model.variant == "fp32+offload" and fit.measured == second.measured


def test_an_offloaded_model_too_slow_for_the_latency_ceiling_is_not_chosen(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Offload's price is latency: its re-benchmark on the eval set decides, and a miss ends the fit saying so."""
    workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95, a_int8_0_peak=5.0,
                    **{"a_fp32+offload_0_peak": 0.5, "a_fp32+offload_0_latency": 900.0})
    events = workflow.submit()
    failed = of(events, FitFailed)
    assert failed and not of(events, FitCompleted) and not of(events, ModelRegistered)
    assert any("fp32+offload misses" in step and "latency" in step for step in failed[0].steps), failed[0].steps


def test_the_fit_carries_predicted_and_measured_peaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95, a_int8_0_peak=2.5)
    fit = of(workflow.submit(), FitCompleted)[0]
    assert fit.model.variant == "int8" and fit.measured is not None and fit.measured.fits
    assert fit.measured.peak_bytes == int(2.5 * MB) and fit.measured.predicted_bytes == fit.budget.total_bytes


def test_a_variant_whose_peak_cannot_be_measured_is_not_chosen_and_the_fit_ends_with_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The measuring child timing out (or dying for memory) is an answer, not a crash of the handler that would
    measure again on every redelivery until the event is dead-lettered with no reason."""
    workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95, a_int8_0_peak=-1.0,
                    **{"a_fp32+offload_0_peak": -1.0})
    events = workflow.submit()
    (budget,) = [e for e in of(events, MemoryBudgetComputed) if e.budget.variant == "int8"]
    assert budget.budget.fits and budget.measured is None
    failed = of(events, FitFailed)
    assert failed and any("int8: its peak memory could not be measured" in s and "TimeoutExpired" not in s
                          for s in failed[0].steps), failed[0].steps
    assert not of(events, FitCompleted)

def test_a_tree_measured_once_at_a_shape_is_not_measured_again_and_the_fit_says_when_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A measurement is a fresh interpreter (seconds of CPU): a second run of the same model reuses the first run's
    peak for the same variant tree, shape and device, and says so; the measuring child is not started again."""
    workflow = build_workflow(tmp_path, monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95, a_int8_0_peak=2.5)
    calls: list[Path] = []
    real = ScriptedRuntime.measure_peak

    def counted(self: ScriptedRuntime, model_dir: Path, spec: TaskSpec, device: str) -> PeakMeasured:
        calls.append(model_dir)
        return real(self, model_dir, spec, device)

    monkeypatch.setattr(ScriptedRuntime, "measure_peak", counted)
    first = of(workflow.submit(), FitCompleted)[0]
    measured_first = len(calls)
    second = of(workflow.submit(), FitCompleted)[-1]
    assert first.run_id != second.run_id and first.model.tree_digest == second.model.tree_digest
    assert measured_first >= 1 and len(calls) == measured_first, "the second run started no measuring child"
    assert first.measured is not None and "measured before" not in first.measured.note
    assert second.measured is not None and second.measured.peak_bytes == first.measured.peak_bytes
    assert f"measured before, by run {str(first.run_id)[:8]}" in second.measured.note


def test_a_peak_is_kept_under_everything_it_depends_on() -> None:
    spec = TaskSpec(type="generation", prompt="Q: {input}\nA:", max_new_tokens=8)
    key = peak_key("tree", spec, "cpu")
    assert key == peak_key("tree", spec.model_copy(), "cpu")
    assert len({key, peak_key("other", spec, "cpu"), peak_key("tree", spec, "cuda:0"),
                peak_key("tree", spec.model_copy(update={"max_new_tokens": 16}), "cpu"),
                peak_key("tree", spec, "cpu", batch=4)}) == 5


def test_a_peak_measured_on_another_device_says_so() -> None:
    arch = Architecture(hidden=64, layers=2, heads=4, intermediate=128, is_decoder=False)
    predicted = memory_budget("int8", 1_000_000, arch, 512 * MB, bytes_per_param=1.0)
    on_cpu = judge_peak(predicted, peak_bytes=600 * MB, device="cpu", target_device="cuda", method="VmHWM growth",
                        batch=8, context=128, serve_s=0.1)
    assert not on_cpu.fits and "measured on cpu, the target is cuda" in on_cpu.note
    assert on_cpu.error == pytest.approx((predicted.total_bytes - 600 * MB) / (600 * MB), abs=1e-4)
    same = judge_peak(predicted, peak_bytes=100 * MB, device="cuda:0", target_device="cuda", method="allocator",
                      batch=8, context=128, serve_s=0.1)
    assert same.fits and same.note == ""


@pytest.mark.slow
def test_a_tiny_llama_peak_is_measured_in_a_process_of_its_own(tmp_path: Path) -> None:
    from tests.lm_fixtures import tiny_llama
    from weightflow.shared.modeling.peak import measure_peak

    model = tiny_llama(tmp_path / "tiny")
    spec = TaskSpec(type="generation", prompt="Q: {input}\nA:", max_new_tokens=8)
    peak = measure_peak(model, spec, "cpu")
    assert peak.new_tokens == 8 and peak.context == 256 + 8 and peak.batch == 8
    # the interpreter and torch are not counted (~400 MiB); a KV cache and logits for 8 x 264 tokens are
    assert 1 * MB < peak.peak_bytes < 120 * MB, peak.describe()
    assert peak.serve_peak_bytes <= peak.peak_bytes and peak.method.startswith("VmHWM")


def test_a_measuring_child_ends_with_the_service_that_asked(tmp_path: Path) -> None:
    """A fitting service killed by its supervisor (SIGKILL after the grace) must not leave its measuring child
    holding a whole model's memory for up to half an hour."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'from weightflow.shared.modeling.peak import _exit_with_parent\\n"
        "import time\\n_exit_with_parent(0.1)\\ntime.sleep(120)'])\n"
        "time.sleep(120)\n")], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 60
        while not (children := psutil.Process(parent.pid).children()):
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.1)
        time.sleep(3)  # the child has imported and started watching
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, "the measuring child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
