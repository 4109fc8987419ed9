"""The canary schedule at fleet scale: slots spread over the interval, one claim per slot across replicas, and a
tick that reads only the due rows (issue 26, target 3). The bench (`bench/canary_schedule.py`) times it."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

from sqlalchemy import text
from sqlmodel import Session

from weightflow.contracts.monitoring import CanaryRequested
from weightflow.services.monitoring import domain
from weightflow.services.monitoring.app import claim_due_canaries
from weightflow.services.monitoring.tables import Watch
from weightflow.shared.db import create_tables, make_engine

INTERVAL = 60.0


def test_slots_spread_a_fleet_promoted_at_once_over_the_interval() -> None:
    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    slots = [domain.next_due(f"deployment-{i}", INTERVAL, now) for i in range(1000)]
    half = now + timedelta(seconds=INTERVAL / 2)
    assert all(half < s <= half + timedelta(seconds=INTERVAL) for s in slots), "half an interval after, at least"
    per_ten_seconds = Counter(int((s - half).total_seconds() // 10) for s in slots)
    assert sorted(per_ten_seconds) == [0, 1, 2, 3, 4, 5] and min(per_ten_seconds.values()) > 120, per_ten_seconds


def test_a_slot_is_on_a_fixed_grid_so_late_ticks_do_not_drift_it() -> None:
    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    first = domain.next_due("orders", INTERVAL, now)
    assert domain.next_due("orders", INTERVAL, first) == first + timedelta(seconds=INTERVAL)
    late = first + timedelta(seconds=0.9)  # the tick that claimed it ran late
    assert domain.next_due("orders", INTERVAL, late) == first + timedelta(seconds=INTERVAL)
    down = first + timedelta(seconds=5 * INTERVAL + 1)  # a monitor down for five intervals runs one, not five
    assert domain.next_due("orders", INTERVAL, down) == first + timedelta(seconds=6 * INTERVAL)
    just_ran = first - timedelta(seconds=1)  # a canary one second before its slot: the slot after, not this one
    assert domain.next_due("orders", INTERVAL, just_ran) == first + timedelta(seconds=INTERVAL)
    assert domain.next_due("orders", 0, now) == now


def _watches(engine: Any, count: int, due: datetime) -> None:
    with Session(engine) as session:
        for i in range(count):
            session.add(Watch(deployment=f"d{i:04d}", manifest_id="m" * 64, run_id=str(uuid4()),
                              manifest_run_id=str(uuid4()), promoted_event_id=str(uuid4()), interval_s=INTERVAL,
                              next_due_at=due))
        session.commit()


def _tick(engine: Any) -> list[CanaryRequested]:
    commit = claim_due_canaries(SimpleNamespace())  # type: ignore[arg-type]
    assert commit is not None
    with Session(engine) as session:
        events = [e for e in commit(session) if isinstance(e, CanaryRequested)]
        session.commit()
    return events


def test_two_replicas_ticking_together_claim_every_due_canary_once(database_url: str) -> None:
    engine = make_engine(database_url)
    create_tables(engine)
    due = datetime.now(UTC) - timedelta(seconds=1)
    _watches(engine, 1200, due)
    claimed: list[CanaryRequested] = []
    lock, start = threading.Lock(), threading.Barrier(2)

    def replica() -> None:
        start.wait()
        for _ in range(6):  # 500 a tick: 1,200 need three ticks between them
            events = _tick(engine)
            with lock:
                claimed.extend(events)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(e.deployment for e in claimed)
    assert len(counts) == 1200 and set(counts.values()) == {1}, "every due canary claimed exactly once"
    assert all(e.scheduled and e.due_at is not None and abs((e.due_at - due).total_seconds()) < 1e-3
               for e in claimed)
    assert _tick(engine) == [], "each moved to a slot in the next interval"
    engine.dispose()


def test_a_tick_reads_the_due_rows_by_their_index(tmp_path: Any) -> None:
    from weightflow.services.monitoring.app import due_watches

    engine = make_engine(f"sqlite:///{tmp_path / 'wf.db'}")
    create_tables(engine)
    query = str(due_watches(datetime.now(UTC)).compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = conn.execute(text(f"EXPLAIN QUERY PLAN {query}")).all()
    assert any("ix_monitoring_watches_next_due_at" in str(row) for row in plan), plan
    engine.dispose()


def test_a_kept_model_is_loaded_once_and_verified_before_every_canary(tmp_path: Any,
                                                                      monkeypatch: Any) -> None:
    import os

    import pytest

    from tests.lm_fixtures import tiny_lm_deployment
    from weightflow.services.monitoring import app
    from weightflow.serving.testing import register_checkpoint
    from weightflow.shared.artifacts import ArtifactStore, IntegrityError
    from weightflow.shared.modeling import stored
    from weightflow.shared.modeling.stored import read_manifest
    from weightflow.shared.settings import Settings

    store = ArtifactStore(tmp_path / "store")
    manifest_id = register_checkpoint(store, tiny_lm_deployment(tmp_path / "tiny"))
    manifest = read_manifest(store, manifest_id)
    loads: list[str] = []
    real_load = stored.load_deployment

    def counted(*args: Any, **kwargs: Any) -> Any:
        loads.append("load")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(app, "load_deployment", counted)
    ctx = SimpleNamespace(store=store, settings=Settings(home=tmp_path / "home", device="cpu"))
    kept = app._KeptModels()
    first = kept.get(ctx, manifest_id, manifest)  # type: ignore[arg-type]
    assert kept.get(ctx, manifest_id, manifest) is first and loads == ["load"]  # type: ignore[arg-type]
    weights = next(d for name, d in manifest.checksums().items() if name.endswith(".safetensors"))
    path = store.path_of(weights)
    original = path.read_bytes()
    # a repair swaps a new file in (as the store's put does): the kept model holds the old file's pages, so the next
    # canary loads the model again even though every object verifies
    repaired = path.with_name("repaired")
    repaired.write_bytes(original)
    os.replace(repaired, path)
    second = kept.get(ctx, manifest_id, manifest)  # type: ignore[arg-type]
    assert second is not first and loads == ["load", "load"]
    os.chmod(path, 0o600)
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit changed in place after the model was kept
    with pytest.raises(IntegrityError):
        kept.get(ctx, manifest_id, manifest)  # type: ignore[arg-type]
    path.write_bytes(original)  # the same file again, but the failed canary dropped the kept model
    assert kept.get(ctx, manifest_id, manifest) is not second and len(loads) == 3  # type: ignore[arg-type]
    loads.clear()
    none_kept = SimpleNamespace(store=store, settings=Settings(home=tmp_path / "home", device="cpu",
                                                               canary_models_kept=0))
    fresh = app._KeptModels()
    fresh.get(none_kept, manifest_id, manifest)  # type: ignore[arg-type]
    fresh.get(none_kept, manifest_id, manifest)  # type: ignore[arg-type]
    assert loads == ["load", "load"], "WEIGHTFLOW_CANARY_MODELS_KEPT=0 loads for every canary"
