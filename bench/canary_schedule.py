"""16. The canary schedule at fleet scale (issue 26, target 3): what a scheduler tick costs as the deployments that
are not due grow, and how late the schedule claims a slot.

Both run the monitoring service's own tick (`claim_due_canaries`'s transaction: select due rows, compare-and-set
each to its next slot, build the `CanaryRequested` events) against a SQLite file, as the embedded default does.

* Tick cost: 20 deployments due among N watched (1,000 / 10,000 / 100,000), the median of 30 ticks each (the 20 are
  made due again between ticks). The baseline is the same tick with the index dropped (a full scan of the table:
  what a tick cost before migration 0003), recreated after.
* Claim lag: 1,000 deployments with a 60 s interval (a fleet promoted at once: every first canary due together),
  ticking every 0.25 s (the default) for one and a half intervals after the promotion burst; lag = tick time - slot
  for every claim after the burst.
* End to end: the same fleet watched by one real monitoring service (`weightflow service monitoring` on an embedded
  nats-server and SQLite), every deployment pointing at one registered manifest of a trivial model (a 2-layer,
  16-wide BERT, zero-shot over 8 canary rows), each deployment's first slot already on its phase (the steady state,
  not the promotion burst). After one interval, the service's own histograms: how late each canary started after
  its slot (`weightflow_canary_start_lag_seconds`) and how long one took. With one replica, canaries must take less
  than interval / deployments each (60 ms here), or they queue and the lag grows.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

from bench.harness import Config, Report, Row, Stat, percentile

NAME = "canary_schedule"
TICK_S = 0.25  # the default WEIGHTFLOW_SCHEDULER_TICK_S
DUE = 20
INDEX = "ix_monitoring_watches_next_due_at"


def _fleet(engine: Any, count: int, due: datetime, interval: float, start: int = 0) -> None:
    from sqlalchemy import insert

    from weightflow.services.monitoring.tables import Watch

    rows = [{"deployment": f"d{i:06d}", "manifest_id": "m" * 64, "run_id": str(uuid4()),
             "manifest_run_id": str(uuid4()), "promoted_event_id": str(uuid4()), "interval_s": interval,
             "next_due_at": due, "updated_at": due} for i in range(start, start + count)]
    with engine.begin() as conn:
        conn.execute(insert(Watch), rows)


def _tick(engine: Any) -> list[Any]:
    from sqlmodel import Session

    from weightflow.services.monitoring.app import claim_due_canaries

    commit = claim_due_canaries(SimpleNamespace())  # type: ignore[arg-type]
    assert commit is not None
    with Session(engine) as session:
        events = list(commit(session))
        session.commit()
    return events


def _tick_cost(engine: Any, ticks: int, *, indexed: bool) -> list[float]:
    """Seconds per tick with DUE deployments due; the rest are not."""
    from sqlalchemy import text, update
    from sqlmodel import col

    from weightflow.services.monitoring.tables import Watch

    if not indexed:
        with engine.begin() as conn:
            conn.execute(text(f"DROP INDEX {INDEX}"))
    seconds = []
    try:
        for _ in range(ticks):
            with engine.begin() as conn:  # the same DUE deployments due again (the ORM formats the time)
                conn.execute(update(Watch).where(col(Watch.deployment) < f"d{DUE:06d}")
                             .values(next_due_at=datetime.now(UTC) - timedelta(seconds=1)))
            started = time.perf_counter()
            claimed = _tick(engine)
            seconds.append(time.perf_counter() - started)
            assert len(claimed) == DUE, f"claimed {len(claimed)} of {DUE}"
    finally:
        if not indexed:
            with engine.begin() as conn:
                conn.execute(text(f"CREATE INDEX {INDEX} ON monitoring_watches (next_due_at)"))
    return seconds


def _claim_lag(engine: Any, deployments: int, interval: float, tick_s: float) -> list[float]:
    """Lag of every claim in the interval after the promotion burst."""
    promoted = datetime.now(UTC)
    _fleet(engine, deployments, promoted, interval, start=10_000_000)
    lags: list[float] = []
    end = time.time() + interval * 1.5 + 2 * tick_s
    while time.time() < end:
        tick_at = datetime.now(UTC)
        for event in _tick(engine):
            if event.due_at > promoted:  # past the burst: a slot the schedule chose
                lags.append((tick_at - event.due_at).total_seconds())
        time.sleep(max(0.0, tick_s - (datetime.now(UTC) - tick_at).total_seconds()))
    return lags


def _trivial_manifest(folder: Path, store: Any) -> str:
    """A registered manifest of a 2-layer, 16-wide BERT doing zero-shot over 8 canary rows."""
    import yaml

    from bench.stackrun import trivial_requirements
    from tests.plugins.scripted import make_checkpoint
    from weightflow.serving.testing import register_checkpoint

    doc = trivial_requirements(folder, "fleet", eval_rows=8, canary_rows=8)
    make_checkpoint(folder / "tiny", "tiny")
    data = yaml.safe_load(doc.read_text())
    data["candidates"] = [{"path": "tiny"}]
    data["monitoring"]["min_canary_rows"] = 8
    doc.write_text(yaml.safe_dump(data, sort_keys=False))
    return register_checkpoint(store, doc)


def _histogram(metrics: str, name: str, labels: str = "") -> tuple[list[tuple[float, float]], float, float]:
    """(le, cumulative count) buckets, count and sum of a Prometheus histogram in `metrics`."""
    buckets, count, total = [], 0.0, 0.0
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket{{") and labels in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_count") and labels in line:
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_sum") and labels in line:
            total = float(line.rsplit(" ", 1)[1])
    return sorted(buckets), count, total


def _quantile_bound(buckets: list[tuple[float, float]], count: float, q: float) -> float:
    """The upper bound of the bucket holding the q-quantile."""
    return next((le for le, cumulative in buckets if cumulative >= q * count), float("inf"))


def _merged(texts: list[str], name: str, labels: str = "") -> tuple[list[tuple[float, float]], float, float]:
    """One histogram summed over replicas' scrapes (the same buckets in each)."""
    parts = [_histogram(text, name, labels) for text in texts]
    buckets: dict[float, float] = {}
    for part, _, _ in parts:
        for le, cumulative in part:
            buckets[le] = buckets.get(le, 0.0) + cumulative
    return sorted(buckets.items()), sum(p[1] for p in parts), sum(p[2] for p in parts)


def _end_to_end(tmp: Path, deployments: int, interval: float, replicas: int) -> dict[str, float]:
    import asyncio
    import os
    import socket
    import subprocess
    import sys

    import httpx
    from sqlalchemy import insert

    from bench.harness import stop, wait_ready
    from weightflow.client import Client
    from weightflow.contracts.monitoring import CanaryRequested
    from weightflow.services.monitoring import domain
    from weightflow.services.monitoring.tables import Watch
    from weightflow.shared.artifacts import ArtifactStore
    from weightflow.shared.db import create_tables, make_engine
    from weightflow.shared.natsd import EmbeddedNats
    from weightflow.shared.settings import Settings

    with EmbeddedNats(tmp / "nats") as nats:
        settings = Settings(home=tmp / "home", nats_url=nats.url)
        store = ArtifactStore(settings.resolved_artifacts_dir())
        manifest_id = _trivial_manifest(tmp / "fleet", store)
        engine = make_engine(settings.resolved_database_url())
        create_tables(engine)
        start = datetime.now(UTC) + timedelta(seconds=15)  # the services' start and first model load come first
        with engine.begin() as conn:
            conn.execute(insert(Watch), [
                {"deployment": name, "manifest_id": manifest_id, "run_id": str(uuid4()),
                 "manifest_run_id": str(uuid4()), "promoted_event_id": str(uuid4()), "interval_s": interval,
                 "next_due_at": domain.next_due(name, interval, start - timedelta(seconds=interval / 2)),
                 "updated_at": start}
                for name in (f"fleet-{i:05d}" for i in range(deployments))])
        engine.dispose()
        procs, ports = [], []
        for _ in range(replicas):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                ports.append(int(sock.getsockname()[1]))
            env = {**os.environ, "WEIGHTFLOW_HOME": str(settings.home), "WEIGHTFLOW_NATS_URL": nats.url,
                   "WEIGHTFLOW_OPS_PORT": str(ports[-1]), "WEIGHTFLOW_TRACE_FILE": "false",
                   "WEIGHTFLOW_DEVICE": "cpu", "WEIGHTFLOW_LOG_LEVEL": "WARNING"}
            procs.append(subprocess.Popen([sys.executable, "-m", "weightflow.cli", "service", "monitoring"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            for proc, port in zip(procs, ports, strict=True):
                wait_ready(f"http://127.0.0.1:{port}", proc, timeout=120)
            time.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds()) + interval + 5)
            texts = [httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text for port in ports]
        finally:
            for proc in procs:
                stop(proc)

        async def requested() -> list[CanaryRequested]:
            async with Client(settings) as client:
                return [e for e in await client.history() if isinstance(e, CanaryRequested)]

        requests = asyncio.run(requested())
    slots = [(e.deployment, e.due_at) for e in requests if e.scheduled]
    lag, count, total = _merged(texts, "weightflow_canary_start_lag_seconds")
    took, took_count, took_sum = _merged(texts, "weightflow_handler_duration_seconds",
                                         'event="monitoring.canary_requested"')
    return {"canaries": count, "lag_p50_le": _quantile_bound(lag, count, 0.5),
            "lag_p95_le": _quantile_bound(lag, count, 0.95), "lag_mean": total / count if count else float("nan"),
            "canary_mean_s": took_sum / took_count if took_count else float("nan"),
            "canary_p95_le": _quantile_bound(took, took_count, 0.95),
            "slots_requested": len(slots), "slots_requested_twice": len(slots) - len(set(slots))}


def run(cfg: Config) -> Report:
    from weightflow.shared.db import create_tables, make_engine

    report = Report(NAME, "16. Canary schedule at scale: tick cost vs deployments not due, claim lag")
    sizes = (1_000, 10_000) if cfg.smoke else (1_000, 10_000, 100_000)
    ticks = 5 if cfg.smoke else 30
    deployments, interval = (100, 6.0) if cfg.smoke else (1_000, 60.0)
    report.config = {"watched": list(sizes), "due_per_tick": DUE, "ticks": ticks, "lag_deployments": deployments,
                     "interval_s": interval, "tick_s": TICK_S}
    with tempfile.TemporaryDirectory(prefix="wf-bench-schedule-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'wf.db'}")
        create_tables(engine)
        watched = 0
        for size in sizes:
            _fleet(engine, size - watched, datetime.now(UTC) + timedelta(days=1), 60.0, start=watched)
            watched = size
            indexed = _tick_cost(engine, ticks, indexed=True)
            scan = _tick_cost(engine, ticks, indexed=False)
            report.add(Row(f"tick with {DUE} due of {size:,} watched", "ms", Stat.of([s * 1000 for s in indexed]),
                           Stat.of([s * 1000 for s in scan]), "the same tick scanning the table (no index)",
                           better="lower"))
        lags = _claim_lag(engine, deployments, interval, TICK_S)
        engine.dispose()
    report.add(Row(f"claim lag, {deployments:,} deployments every {interval:g} s, tick {TICK_S:g} s (p50)", "s",
                   Stat.of([statistics.median(lags)]), better="lower",
                   note=f"p95 {percentile(lags, 95):.3f} s, max {max(lags):.3f} s, {len(lags)} claims"))
    report.notes.append(f"{len(lags)} claims in 1.5 intervals after the burst (each deployment once or twice); "
                        "lag is bounded by the tick: what a canary waits beyond it is the bus hop and its replica's "
                        "queue")
    fleets = ((deployments, 2),) if cfg.smoke else ((deployments, 1), (deployments // 2, 1), (deployments, 2))
    for fleet, replicas in fleets:
        with tempfile.TemporaryDirectory(prefix="wf-bench-fleet-") as tmp:
            e2e = _end_to_end(Path(tmp), fleet, interval, replicas)
        report.add(Row(f"canary start lag, {fleet:,} deployments every {interval:g} s, {replicas} replica(s) (mean)",
                       "s", Stat.of([e2e["lag_mean"]]), better="lower",
                       note=(f"p50 <= {e2e['lag_p50_le']:g} s, p95 <= {e2e['lag_p95_le']:g} s (histogram buckets); "
                             f"{e2e['canaries']:.0f} canaries, one {e2e['canary_mean_s'] * 1000:.0f} ms mean; "
                             f"{e2e['slots_requested']:.0f} slots requested, {e2e['slots_requested_twice']:.0f} "
                             f"twice; keeping up needs a canary under {interval / fleet * replicas * 1000:.0f} ms")))
    return report
