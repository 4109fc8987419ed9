"""2. Orchestration overhead: what a six-stage run costs beyond its model work, and event latency.

Part A runs the shipped example (smoke: a trivial minilm-l3 run) through the embedded stack — a
private nats-server and the six services as separate processes — with the timing probe
(`bench/_probe/sitecustomize.py`) loaded into every service. The probe records each model-layer call
(load, evaluate, quantize, LoRA, checkpoint materialization) and each handler / periodic job with
wall-clock start and end. For each run, over [submit, terminal event]:

* model work = the union of all model-call intervals, across processes;
* orchestration overhead = wall − model work (bus hops, DB transactions, artifact hashing and
  verification, (de)serialization, scheduler waits), reported as a fraction of the wall time;
* in-run hop latency = consumer handler start − producer handler end, for every event one handler
  emitted and another consumed (commit → outbox publish → JetStream → pull → handler thread).

Part B measures publish → handler start on the same nats-server with a minimal `shared.bus.Service`
whose handler does nothing, against raw nats-py on that server: core publish → subscriber callback,
JetStream publish → pull-consumer fetch (the mechanism the bus uses, without faststream, the inbox/
outbox transaction and the worker thread), and request/reply round trip / 2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats

from bench.harness import Config, Report, Row, Stat, percentile, union_length
from bench.stackrun import RunResult, example_copy, running_stack, submit_many, trivial_requirements
from contracts.base import Event, register
from shared.bus import HandlerContext, Service
from shared.settings import Settings
from weightflow.client import Client

NAME = "orchestration"


@register
class BenchPing(Event):
    """The no-op event of the latency microbenchmark (its subject, wf.bench.ping, is in the WF stream)."""

    STAGE = "bench"
    NAME = "ping"
    n: int


# -- probe records -------------------------------------------------------------------------------------


def read_probe(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def producers() -> dict[str, set[str]]:
    """event type name -> the services that emit it, from each service's declared `publishes`."""
    import importlib

    out: dict[str, set[str]] = {}
    for name in ("requirements", "benchmark", "fitting", "tuning", "registry", "monitoring"):
        service = importlib.import_module(f"services.{name}.app").service
        for event_type in service.publishes:
            out.setdefault(event_type.type_name(), set()).add(service.name)
    return out


def hop_latencies(records: Sequence[dict[str, Any]], lo: float, hi: float) -> list[float]:
    """Seconds from the end of the handler that emitted an event to the start of a handler consuming it."""
    handlers = [r for r in records if r["kind"] == "handler" and lo <= r["start"] <= hi]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for r in handlers:
        by_event.setdefault(r["event_id"], []).append(r)
    emitters = producers()
    out = []
    for consumer in handlers:
        cause = consumer.get("causation_id")
        allowed = emitters.get(consumer["event_type"], set())
        candidates = [p for p in by_event.get(cause or "", []) if p["service"] in allowed
                      and p["end"] <= consumer["start"] + 0.001]
        if candidates:
            producer = max(candidates, key=lambda p: p["end"])
            out.append(max(0.0, consumer["start"] - producer["end"]))
    return out


def breakdown(records: Sequence[dict[str, Any]], run: RunResult) -> dict[str, Any]:
    assert run.finished is not None
    lo, hi = run.submitted, run.finished
    model = [(r["start"], r["end"]) for r in records if r["kind"] == "model"]
    handling = [(r["start"], r["end"]) for r in records if r["kind"] in ("handler", "periodic")]
    wall = hi - lo
    model_s = union_length(model, lo, hi)
    busy_s = union_length([*model, *handling], lo, hi)
    service_of_pid = {r["pid"]: r["service"] for r in records if r["kind"] in ("handler", "periodic")}
    spans: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in records:
        if not (lo <= r["start"] <= hi):
            continue
        stage = r.get("service") or service_of_pid.get(r["pid"], f"pid {r['pid']}")
        key = "model_s" if r["kind"] == "model" else "handler_s"
        spans.setdefault(stage, {"handler_s": [], "model_s": []})[key].append((r["start"], r["end"]))
    per_stage = {stage: {key: union_length(v, lo, hi) for key, v in kinds.items()} for stage, kinds in spans.items()}
    return {
        "wall_s": wall,
        "model_s": model_s,
        "overhead_s": wall - model_s,
        "overhead_fraction": (wall - model_s) / wall,
        "in_handler_non_model_s": busy_s - model_s,
        "outside_handlers_s": wall - busy_s,
        "hops_s": hop_latencies(records, lo, hi),
        "per_stage_sum_s": per_stage,
        "events": [e.type_name() for e in run.events],
    }


# -- part A: full runs -----------------------------------------------------------------------------------


def full_runs(cfg: Config, tmp: Path, report: Report) -> str:
    """Run warm-up + timed runs on one stack, add the overhead rows, return the NATS URL used."""
    probe = tmp / "probe.jsonl"
    max_timed = 1 if cfg.smoke else max(1, min(cfg.reps, 3))
    budget_s = 0.0 if cfg.smoke else 240.0  # stop adding full runs past this much timed wall (at least 2)
    results: list[RunResult] = []
    breakdowns: list[dict[str, Any]] = []
    with running_stack(tmp / "home", probe=probe, device=cfg.device) as stack:
        settings = stack.settings
        # Run 0 warms the stack (every service imports, connects and handles one event) and is not recorded:
        # a trivial run, because the example's own first minute would teach nothing the timed runs do not.
        for i in range(max_timed + 1):
            if i > 2 and sum(b["wall_s"] for b in breakdowns) > budget_s:
                break
            deployment = f"bench-orch-{i}"
            if cfg.smoke or i == 0:
                path = trivial_requirements(tmp / "work", deployment)
            else:
                path = example_copy(tmp / "work" / deployment, deployment)
            (result,) = submit_many(settings, [path], timeout=900)
            if result.outcome != "succeeded":
                raise RuntimeError(f"orchestration run {i} ended {result.outcome}: "
                                   f"{[e.type_name() for e in result.events]}; logs in {stack.home / 'logs'}")
            time.sleep(0.5)  # let the last probe lines land
            if i > 0:
                results.append(result)
                breakdowns.append(breakdown(read_probe(probe), result))
        url = settings.resolved_nats_url()
        # Part B needs the same server: run it while this stack (and its nats-server) is still up.
        latency_rows(cfg, tmp, url, report, breakdowns)
    wall = [b["wall_s"] for b in breakdowns]
    workload = "trivial minilm-l3 run (smoke)" if cfg.smoke else "examples/support-tickets (l3+l6, int8, re-bench)"
    report.add(Row("full six-stage run wall time", "s", Stat.of(wall), note=workload))
    report.add(Row("model work inside the run (union over processes)", "s",
                   Stat.of([b["model_s"] for b in breakdowns]),
                   note="load + evaluate + quantize + LoRA + checkpoint materialization"))
    report.add(Row("orchestration overhead (wall − model work)", "s", Stat.of([b["overhead_s"] for b in breakdowns])))
    report.add(Row("orchestration overhead fraction of the run", "fraction",
                   Stat.of([b["overhead_fraction"] for b in breakdowns]), better="lower",
                   extra={"breakdowns": breakdowns}))
    report.add(Row("  of which: in handlers, not model (DB, hashing, serialization)", "s",
                   Stat.of([b["in_handler_non_model_s"] for b in breakdowns])))
    report.add(Row("  of which: outside any handler (bus hops, scheduler tick, waits)", "s",
                   Stat.of([b["outside_handlers_s"] for b in breakdowns])))
    report.config["timed_runs"] = len(breakdowns)
    stages = breakdowns[0]["per_stage_sum_s"]
    report.notes.append("Per stage in timed run 1 (sum of handler/periodic time; of which model calls): " + "; ".join(
        f"{name} {v['handler_s']:.2f} s ({v['model_s']:.2f} s model)" for name, v in stages.items()) + ". Events: "
        + " → ".join(breakdowns[0]["events"]))
    report.config["workload"] = workload
    return url


# -- part B: event latency microbenchmark -------------------------------------------------------------------


class _Signal:
    """Hands a timestamp from a handler (any thread) to the waiting publisher coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[float] | None = None

    def arm(self) -> asyncio.Future[float]:
        self.future = self.loop.create_future()
        return self.future

    def fire(self, stamp: float) -> None:
        future = self.future
        if future is not None:
            self.loop.call_soon_threadsafe(lambda: None if future.done() else future.set_result(stamp))


async def _sample(publish: Callable[[int], Any], signal: _Signal, count: int, pause: float) -> list[float]:
    out = []
    for i in range(count):
        waiter = signal.arm()
        t0 = time.perf_counter()
        await publish(i)
        stamp = await asyncio.wait_for(waiter, 10)
        out.append(stamp - t0)
        await asyncio.sleep(pause)
    return out


async def _microbench(url: str, home: Path, rounds: int, count: int, pause: float) -> dict[str, list[list[float]]]:
    loop = asyncio.get_running_loop()
    signal = _Signal(loop)
    settings = Settings(home=home, nats_url=url)
    svc = Service("benchlat")

    @svc.handles(BenchPing)
    def on_ping(event: BenchPing, ctx: HandlerContext) -> Sequence[Event]:
        signal.fire(time.perf_counter())
        return []

    app = svc.build(settings)
    quiet = ("faststream", "faststream.access.nats")  # one INFO line per message would flood the tables
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    await app.start()
    for name in quiet:  # the broker may set its logger's level again while starting
        logging.getLogger(name).setLevel(logging.WARNING)
    sub_nc = await nats.connect(url)
    pub_nc = await nats.connect(url)
    samples: dict[str, list[list[float]]] = {"weightflow": [], "core": [], "jetstream": [], "reqrep": []}
    try:
        async def on_core(msg: Any) -> None:
            signal.fire(time.perf_counter())

        async def on_request(msg: Any) -> None:
            await msg.respond(b"ok")

        await sub_nc.subscribe("bench.raw.core", cb=on_core)
        await sub_nc.subscribe("bench.raw.req", cb=on_request)
        js_sub = sub_nc.jetstream()
        pull = await js_sub.pull_subscribe("wf.bench.rawjs", durable=f"bench_raw_{uuid4().hex[:8]}")

        async def pull_loop() -> None:
            while True:
                try:
                    msgs = await pull.fetch(1, timeout=1.0)
                except TimeoutError:
                    continue
                for msg in msgs:
                    signal.fire(time.perf_counter())
                    await msg.ack()

        puller = asyncio.create_task(pull_loop())
        js_pub = pub_nc.jetstream()
        async with Client(settings) as client:
            async def wf_publish(i: int) -> None:
                await client.publish(BenchPing(run_id=uuid4(), n=i))

            async def core_publish(i: int) -> None:
                await pub_nc.publish("bench.raw.core", b"x")

            async def js_publish(i: int) -> None:
                await js_pub.publish("wf.bench.rawjs", b"x", headers={"Nats-Msg-Id": uuid4().hex})

            await _sample(wf_publish, signal, 10, pause)  # warm-up
            await _sample(core_publish, signal, 10, pause)
            await _sample(js_publish, signal, 10, pause)
            for _ in range(rounds):  # sides alternate every round, so load drift hits them alike
                samples["weightflow"].append(await _sample(wf_publish, signal, count, pause))
                samples["core"].append(await _sample(core_publish, signal, count, pause))
                samples["jetstream"].append(await _sample(js_publish, signal, count, pause))
                rtts = []
                for _ in range(count):
                    t0 = time.perf_counter()
                    await pub_nc.request("bench.raw.req", b"x", timeout=10)
                    rtts.append((time.perf_counter() - t0) / 2)
                    await asyncio.sleep(pause)
                samples["reqrep"].append(rtts)
        puller.cancel()
        await asyncio.gather(puller, return_exceptions=True)
    finally:
        await sub_nc.close()
        await pub_nc.close()
        await app.stop()
    return samples


def latency_rows(cfg: Config, tmp: Path, url: str, report: Report, breakdowns: list[dict[str, Any]]) -> None:
    rounds = 2 if cfg.smoke else max(2, cfg.reps)
    count = 30 if cfg.smoke else 200
    pause = 0.01
    samples = asyncio.run(_microbench(url, tmp / "micro", rounds, count, pause))
    ms = {side: [[v * 1000.0 for v in r] for r in rounds_] for side, rounds_ in samples.items()}
    baselines = (("core", "raw nats-py core pub → sub callback"),
                 ("jetstream", "raw nats-py JetStream publish → pull fetch"),
                 ("reqrep", "raw nats-py request/reply RTT / 2"))
    for q in (50, 99):
        wf = Stat.of([percentile(r, q) for r in ms["weightflow"]])
        for side, label in baselines:
            report.add(Row(f"event publish → handler start p{q}", "ms", wf,
                           Stat.of([percentile(r, q) for r in ms[side]]), label, "lower",
                           note=f"{count} sequential events per round, {rounds} rounds; median of per-round p{q}"))
    hops = [h * 1000.0 for b in breakdowns for h in b["hops_s"]]
    if hops:
        for q in (50, 99):
            report.add(Row(f"in-run stage hop p{q} (producer handler end → consumer handler start)", "ms",
                           Stat.of([percentile(hops, q)]),
                           Stat.of([percentile(r, q) for r in ms["jetstream"]]),
                           "raw nats-py JetStream publish → pull fetch", "lower",
                           note=f"{len(hops)} hops from the timed runs (commit + outbox publish + fetch + thread); "
                                "services under model load at the time",
                           extra={"hops_ms": hops}))
    report.config.update({"latency_rounds": rounds, "latency_events_per_round": count,
                          "latency_pause_s": pause})


def run(cfg: Config) -> Report:
    report = Report(NAME, "2. Orchestration overhead (six-stage run) and event latency (vs raw nats-py)")
    with tempfile.TemporaryDirectory(prefix="wf-bench-orch-") as tmp_name:
        full_runs(cfg, Path(tmp_name), report)
    report.notes.append("Model work and handler spans come from a timing probe loaded into each service process "
                        "(bench/_probe/sitecustomize.py via PYTHONPATH); no project code is changed. The canary "
                        "is started by monitoring's 1 s scheduler tick, so up to ~1 s of each run is that wait.")
    report.notes.append("Latency sides run in the bench process against the stack's own nats-server; the "
                        "weightflow side is a minimal shared.bus.Service (faststream pull consumer, SQLite inbox, "
                        "handler in a worker thread) whose handler does nothing.")
    return report
