"""6. Scale: N concurrent runs of a trivial model through one stack, with one and two replicas per service.

A trivial run (`bench.stackrun.trivial_requirements`): minilm-l3 only, thresholds it clears outright,
fp32 fits, no tuning — six stages, one small benchmark (64 examples) and one canary (32 examples). All
N runs are submitted at once; a run's latency is submit → its `CanaryPassed` (stamped by monitoring).
Runs per minute = N / (last finish − first submit) × 60. Each stack does one unrecorded warm-up run
first. The weightflow side of each row is two replicas of every service, the baseline one replica.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import Better, Config, Report, Row, Stat, percentile
from bench.stackrun import RunResult, running_stack, submit_many, trivial_requirements

NAME = "scale"


def levels(cfg: Config) -> list[int]:
    return [1, 2] if cfg.smoke else [1, 10, 50]


def _summarise(results: list[RunResult]) -> dict[str, Any]:
    done = [r for r in results if r.outcome == "succeeded" and r.finished is not None]
    latencies = [r.seconds for r in done if r.seconds is not None]
    first = min(r.submitted for r in results)
    last = max((r.finished for r in done if r.finished is not None), default=first)
    span = max(last - first, 1e-9)
    return {
        "n": len(results),
        "succeeded": len(done),
        "outcomes": sorted({r.outcome or "unknown" for r in results}),
        "span_s": span,
        "runs_per_min": len(done) / span * 60.0,
        "latency_p50_s": percentile(latencies, 50) if latencies else None,
        "latency_p95_s": percentile(latencies, 95) if latencies else None,
        "latencies_s": latencies,
    }


def measure_stack(cfg: Config, tmp: Path, replicas: int, *, env: dict[str, str] | None = None,
                  label: str = "") -> dict[int, list[dict[str, Any]]]:
    """{N: one summary per repetition} for one stack with `replicas` of each service (`env` for its services)."""
    work = tmp / f"work{label}-r{replicas}"
    out: dict[int, list[dict[str, Any]]] = {}
    with running_stack(tmp / f"home{label}-r{replicas}", replicas=replicas, device=cfg.device, env=env) as stack:
        settings = stack.settings
        (warm,) = submit_many(settings, [trivial_requirements(work, "bench-warm")], timeout=600)
        if warm.outcome != "succeeded":
            raise RuntimeError(f"warm-up run ended {warm.outcome}: {[e.type_name() for e in warm.events]}; "
                               f"logs in {stack.home / 'logs'}")
        for n in levels(cfg):
            repeats = max(1, min(cfg.reps, 3)) if n == 1 else 1
            out[n] = []
            for rep in range(repeats):
                paths = [trivial_requirements(work, f"bench-r{replicas}-n{n}-{rep}-{i}") for i in range(n)]
                summary = _summarise(submit_many(settings, paths, timeout=max(600.0, 30.0 * n)))
                if summary["succeeded"] != n:
                    raise RuntimeError(f"{summary['succeeded']}/{n} runs succeeded ({summary['outcomes']}) with "
                                       f"{replicas} replica(s); logs in {stack.home / 'logs'}")
                out[n].append(summary)
    return out


METRICS: tuple[tuple[str, str, str, Better], ...] = (("runs_per_min", "throughput", "runs/min", "higher"),
                                                     ("latency_p95_s", "p95 run latency", "s", "lower"),
                                                     ("latency_p50_s", "p50 run latency", "s", "lower"))


def add_level_rows(report: Report, cfg: Config, mine: dict[int, list[dict[str, Any]]],
                   theirs: dict[int, list[dict[str, Any]]], baseline_name: str, note: Callable[[int], str],
                   names: tuple[str, str]) -> None:
    """One row per level and metric: `mine` against `theirs` (their summaries kept under `names`)."""
    for n in levels(cfg):
        for key, metric, unit, better in METRICS:
            report.add(Row(f"N={n}: {metric}", unit, Stat.of([s[key] for s in mine[n]]),
                           Stat.of([s[key] for s in theirs[n]]), baseline_name, better, note=note(n),
                           extra={names[0]: mine[n], names[1]: theirs[n]}))


def run(cfg: Config) -> Report:
    report = Report(NAME, "6. Scale: N concurrent trivial runs, two replicas per service vs one")
    with tempfile.TemporaryDirectory(prefix="wf-bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        one = measure_stack(cfg, tmp, 1)
        two = measure_stack(cfg, tmp, 2)
    add_level_rows(report, cfg, two, one, "1 replica per service",
                   lambda n: "weightflow side = 2 replicas per service"
                   + (f"; {len(one[n])} repetitions of N=1" if n == 1 else ""),
                   names=("two_replicas", "one_replica"))
    report.config = {"levels": levels(cfg), "replicas": [1, 2],
                     "workload": "trivial: minilm-l3 only, eval 64 rows, canary 32 rows, fp32 fits, no tuning"}
    report.notes.append("Both stacks run on the same 2 CPU cores: a second replica adds concurrency, not cores, "
                        "so the ratio shows what parallel handlers buy (overlapping I/O, DB and bus waits) minus "
                        "the cost of 12 instead of 6 service processes.")
    return report
