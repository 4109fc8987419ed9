"""Driving a real embedded stack from the bench: workloads on disk, start/stop, many runs at once.

Used by the orchestration and scale comparisons. Runs are submitted exactly as `weightflow submit`
does (`weightflow.submission.prepare`: validate, put data files in the store, build the event) and
followed on the event stream with `weightflow.client.RunTracker`. Every service process of a stack
appends its OpenTelemetry spans to `<home>/traces.jsonl` (shared.telemetry), which the orchestration
comparison reads (bench.spans); nothing is injected into the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import yaml

from bench.harness import EXAMPLE_DIR
from weightflow.client import Client, RunTracker
from weightflow.contracts.base import Event
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.settings import Settings
from weightflow.stack import Stack
from weightflow.submission import prepare


def example_copy(dest: Path, deployment: str) -> Path:
    """The shipped example (both candidates, 140 MB target: int8 + re-benchmark) under its own deployment."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("eval.jsonl", "canary.jsonl", "train.jsonl", "general.jsonl"):
        shutil.copyfile(EXAMPLE_DIR / name, dest / name)
    doc = yaml.safe_load((EXAMPLE_DIR / "requirements.yaml").read_text())
    doc["deployment"]["name"] = deployment
    path = dest / f"{deployment}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def trivial_requirements(dest: Path, deployment: str, *, eval_rows: int = 64, canary_rows: int = 32) -> Path:
    """A run with a trivial model that passes outright: minilm-l3 only, fp32 fits, nothing to tune.

    Data are small slices of the example's files written next to the YAML (shared by every run that
    uses `dest`, so they upload once and deduplicate by digest).
    """
    dest.mkdir(parents=True, exist_ok=True)
    for split, rows in (("eval", eval_rows), ("canary", canary_rows)):
        target = dest / f"{split}.jsonl"
        if not target.exists():
            lines = (EXAMPLE_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            target.write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    labels = yaml.safe_load((EXAMPLE_DIR / "requirements.yaml").read_text())["task"]["labels"]
    doc = {
        "name": f"bench-{deployment}",
        "task": {"type": "zero-shot-classification", "labels": labels},
        "data": {"eval": "eval.jsonl", "canary": "canary.jsonl"},
        "quality": {"metric": "accuracy", "threshold": 0.05, "tunable_gap": 0.0},
        "latency": {"p95_ms": 600_000},
        "cost": {"per_1k_tasks_usd": 1_000_000},
        "deployment": {"name": deployment, "mode": "self-hosted",
                       "hardware": {"profile": "bench-cpu", "device": "cpu", "memory_mb": 16_384,
                                    "cost_per_hour_usd": 0.10}},
        "candidates": ["minilm-l3"],
        "quantization": {"allowed": ["int8"]},
        "monitoring": {"canary_interval_s": 3600, "quality_drop": 1.0, "latency_increase_pct": 100_000,
                       "cost_increase_pct": 100_000},
    }
    path = dest / f"{deployment}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.contextmanager
def running_stack(home: Path, *, replicas: int = 1, device: str = "auto",
                  env: dict[str, str] | None = None) -> Iterator[Stack]:
    """The embedded stack (nats-server + one process per service and replica) as `weightflow up` runs it;
    the canary interval is an hour, so only each run's first canary (due at promotion) runs. `env` reaches the
    service processes (PYTHONPATH to a worktree runs another release's services)."""
    env = {"WEIGHTFLOW_CANARY_INTERVAL_S": "3600", "WEIGHTFLOW_DEVICE": device, **(env or {})}
    stack = Stack(Settings(home=home), replicas=replicas, env=env)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@dataclass
class RunResult:
    run_id: UUID
    submitted: float
    finished: float | None = None
    outcome: str | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        return None if self.finished is None else self.finished - self.submitted


def submit_many(settings: Settings, paths: list[Path], *, timeout: float) -> list[RunResult]:
    """Submit every requirements file at once and follow all the runs to their ends.

    `finished` is the terminal event's `occurred_at` (stamped by the service that emitted it, on this
    machine's clock), so a follower lagging behind under load does not stretch the latency.
    """
    store = ArtifactStore(settings.resolved_artifacts_dir())
    events: list[Event] = [prepare(path, store).event for path in paths]
    return asyncio.run(_submit_many(settings, events, timeout))


async def _submit_many(settings: Settings, events: list[Event], timeout: float) -> list[RunResult]:
    results = {e.run_id: RunResult(e.run_id, 0.0) for e in events}
    trackers = {e.run_id: RunTracker({e.run_id}) for e in events}
    async with Client(settings) as client:
        since = datetime.now(UTC) - timedelta(seconds=1)

        async def follow() -> None:
            pending = set(trackers)
            async with contextlib.aclosing(client.follow(since=since)) as stream:
                async for event in stream:
                    for run_id in list(pending):
                        if trackers[run_id].feed(event):
                            result = results[run_id]
                            result.finished = event.occurred_at.timestamp()
                            result.outcome = trackers[run_id].outcome
                            pending.discard(run_id)
                    if not pending:
                        return

        follower = asyncio.create_task(follow())

        async def publish(event: Event) -> None:
            results[event.run_id].submitted = time.time()
            await client.publish(event)

        await asyncio.gather(*(publish(e) for e in events))
        try:
            await asyncio.wait_for(follower, timeout)
        except TimeoutError:
            for result in results.values():
                if result.outcome is None:
                    result.outcome = "timed out"
    for run_id, result in results.items():
        result.events = trackers[run_id].events
    return list(results.values())
