"""14. Where an event hop's time goes: publish → faststream callback → run check → worker thread → inbox check →
handler, on the orchestration bench's minimal `shared.bus.Service` (a handler that does nothing).

Time stamps are taken by wrapping the runtime's own steps for the length of this comparison (its callback, its
run-registry lookup, `handle_once`, `already_processed`); nothing else changes. Raw JetStream publish → pull on the
same server is the baseline of the whole hop, as in §2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats

from bench.harness import Config, Report, Row, Stat, percentile
from bench.orchestration import BenchPing
from weightflow.client import Client
from weightflow.contracts.topology import Stage
from weightflow.contracts.workflow import RunRecord
from weightflow.shared.bus import HandlerContext, HandlerResult, Service, processing
from weightflow.shared.bus import runtime as bus_runtime
from weightflow.shared.bus.runtime import build_app
from weightflow.shared.bus.streams import run_subject
from weightflow.shared.natsd import EmbeddedNats
from weightflow.shared.settings import Settings

NAME = "hop_profile"
STEPS = (("published", "publish called → its ack returned"),
         ("callback", "ack → faststream callback (pull filled, decode, middlewares)"),
         ("run_check_start", "callback → run check (pipeline steps, heartbeat task)"),
         ("run_check_end", "run check (run registry lookup)"),
         ("thread", "→ worker thread (asyncio.to_thread hand-off)"),
         ("inbox_checked", "inbox check (already_processed, in the thread)"),
         ("handler", "→ handler start"))


@contextlib.contextmanager
def stamped(marks: dict[str, float]) -> Iterator[None]:
    """The runtime's steps, each setting its time stamp once per event, for the length of the block."""
    def mark(key: str) -> None:
        marks.setdefault(key, time.perf_counter())

    runtime_cls = bus_runtime.ServiceRuntime
    saved: list[tuple[Any, str, Any]] = [(runtime_cls, "handle", runtime_cls.handle),
                                         (runtime_cls, "run_record", runtime_cls.run_record),
                                         (bus_runtime, "handle_once", vars(bus_runtime)["handle_once"]),
                                         (processing, "already_processed", processing.already_processed)]
    handle, run_record, handle_once, already_processed = (s[2] for s in saved)

    async def on_handle(self: Any, *args: Any) -> None:
        mark("callback")
        await handle(self, *args)

    async def on_run_record(self: Any, run_id: Any) -> Any:
        mark("run_check_start")
        found = await run_record(self, run_id)
        mark("run_check_end")
        return found

    def on_handle_once(*args: Any, **kw: Any) -> bool:
        mark("thread")
        return bool(handle_once(*args, **kw))

    def on_already_processed(*args: Any) -> bool:
        done = bool(already_processed(*args))
        mark("inbox_checked")
        return done

    for (owner, attr, _), new in zip(saved, (on_handle, on_run_record, on_handle_once, on_already_processed),
                                     strict=True):
        setattr(owner, attr, new)
    try:
        yield
    finally:
        for owner, attr, old in saved:
            setattr(owner, attr, old)


async def _profile(url: str, home: Path, events: int, warmup: int) -> tuple[list[dict[str, float]], list[float]]:
    marks: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    reached = asyncio.Event()
    svc = Service("benchhop", declared=Stage(0, "benchhop", "bench hop profile", consumes=(BenchPing,), emits=()))

    @svc.handles(BenchPing)
    def on_ping(event: BenchPing, ctx: HandlerContext) -> HandlerResult:
        marks.setdefault("handler", time.perf_counter())
        loop.call_soon_threadsafe(reached.set)
        return []

    settings = Settings(home=home, nats_url=url)
    rows: list[dict[str, float]] = []
    raw: list[float] = []
    with stamped(marks):
        app = build_app(svc, settings)
        await app.start()
        for name in ("faststream", "faststream.access.nats"):
            logging.getLogger(name).setLevel(logging.WARNING)
        nc = await nats.connect(url)
        try:
            async with Client(settings) as client:
                record = RunRecord(run_id=uuid4(), deployment="bench-hop", version=1, requirements_digest="0" * 64)
                await client.publish_raw(run_subject(record.run_id), record.model_dump_json().encode(),
                                         f"run-{record.run_id}")
                for i in range(warmup + events):
                    marks.clear()
                    reached.clear()
                    marks["t0"] = time.perf_counter()
                    await client.publish(BenchPing(run_id=record.run_id, n=i))
                    marks.setdefault("published", time.perf_counter())
                    await asyncio.wait_for(reached.wait(), 10)
                    if i >= warmup:
                        rows.append(dict(marks))
                    await asyncio.sleep(0.01)
            js = nc.jetstream()
            pull = await js.pull_subscribe("wf.bench.hopraw", durable=f"bench_hop_{uuid4().hex[:8]}")
            for i in range(warmup + events):
                start = time.perf_counter()
                await js.publish("wf.bench.hopraw", b"x", headers={"Nats-Msg-Id": uuid4().hex})
                (msg,) = await pull.fetch(1, timeout=5)
                if i >= warmup:
                    raw.append((time.perf_counter() - start) * 1000)
                await msg.ack()
        finally:
            await nc.close()
            await app.stop()
    return rows, raw


def run(cfg: Config) -> Report:
    report = Report(NAME, "14. Where an event hop's time goes (publish → handler start, step by step)")
    events, warmup = (30, 10) if cfg.smoke else (200, 30)
    with tempfile.TemporaryDirectory(prefix="wf-bench-hop-") as tmp_name, \
            EmbeddedNats(Path(tmp_name) / "nats") as server:
        rows, raw = asyncio.run(_profile(server.url, Path(tmp_name) / "home", events, warmup))
    report.config = {"events": events, "warmup": warmup}

    def step(key: str, prev: str) -> Callable[[dict[str, float]], float]:
        return lambda r: (r[key] - r[prev]) * 1000

    prev = "t0"
    for key, label in STEPS:
        values = [step(key, prev)(r) for r in rows if key in r and prev in r]
        if values:
            report.add(Row(label, "ms", Stat.of(values), None, "—", "none",
                           note=f"p90 {percentile(values, 90):.3f} ms"))
        prev = key
    whole = [step("handler", "t0")(r) for r in rows]
    report.add(Row("publish → handler start, whole hop", "ms", Stat.of(whole), Stat.of(raw),
                   "raw JetStream publish → pull", "lower",
                   note=f"p99 {percentile(whole, 99):.2f} vs {percentile(raw, 99):.2f} ms"))
    report.notes.append("each step's row is the time from the previous step's stamp; the steps are the runtime's "
                        "own functions, wrapped only while this comparison runs")
    return report
