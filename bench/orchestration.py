"""2. Orchestration overhead: what a six-stage run costs beyond its model work, and event latency.

Part A runs the shipped example (smoke: a trivial minilm-l3 run) through the embedded stack — a
private nats-server and the six services as separate processes — and reads back the OpenTelemetry
spans every service process writes to `<home>/traces.jsonl` (bench.spans): the model layer's own spans
around its work (load, evaluate, general score, predict, quantize, LoRA train/attach, building a
built-in candidate's tree) and faststream's telemetry span per handled message (arrival → run lookup,
handler, commit, outbox publish, ack). For each run, over [submit, terminal event]:

* model work = the union of all model spans, across processes;
* orchestration overhead = wall − model work (bus hops, DB transactions, artifact hashing and
  verification, (de)serialization, scheduler waits), reported as a fraction of the wall time;
* in-run hop latency = consumer handler span start − the producer's publish of that event (the
  `create` span the producer's handler opened as it began publishing from its outbox): JetStream
  publish with ack → pull → decode → handler span; the producer's commit and outbox read are inside its
  own handler span now.

Part B measures publish → handler start on the same nats-server with a minimal `shared.bus.Service`
whose handler does nothing (its run registered, as every workflow run is, so the bus's run check passes),
against raw nats-py on that server: core publish → subscriber callback, JetStream publish → pull-consumer
fetch (the mechanism the bus uses, without faststream, the run lookup, the inbox check and the worker
thread), and request/reply round trip / 2.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats

from bench import spans
from bench.harness import Config, Report, Row, Stat, percentile, union_length
from bench.stackrun import RunResult, example_copy, running_stack, submit_many, trivial_requirements
from weightflow.client import Client
from weightflow.contracts.base import Event, register
from weightflow.contracts.topology import Stage
from weightflow.contracts.workflow import RunRecord
from weightflow.shared.bus import HandlerContext, HandlerResult, Service
from weightflow.shared.bus.runtime import build_app
from weightflow.shared.bus.streams import run_subject
from weightflow.shared.settings import Settings

NAME = "orchestration"


@register
class BenchPing(Event):
    """The no-op event of the latency microbenchmark (its subject, wf.bench.ping, is in the WF stream)."""

    STAGE = "bench"
    NAME = "ping"
    n: int


# -- spans of one run ----------------------------------------------------------------------------------


def breakdown(all_spans: Sequence[spans.Span], run: RunResult) -> dict[str, Any]:
    assert run.finished is not None
    lo, hi = run.submitted, run.finished
    inside = spans.within(all_spans, lo, hi)
    model = spans.intervals(inside, "model")
    handling = spans.intervals(inside, "handler")
    wall = hi - lo
    model_s = union_length(model, lo, hi)
    busy_s = union_length([*model, *handling], lo, hi)
    per_stage: dict[str, dict[str, float]] = {}
    for stage in sorted({s.service for s in inside}):
        mine = [s for s in inside if s.service == stage]
        per_stage[stage] = {"handler_s": union_length(spans.intervals(mine, "handler"), lo, hi),
                            "model_s": union_length(spans.intervals(mine, "model"), lo, hi)}
    model_by_name: dict[str, float] = {}
    for s in inside:
        if s.kind == "model":
            model_by_name[s.name] = model_by_name.get(s.name, 0.0) + min(s.end, hi) - max(s.start, lo)
    hops = spans.hops(all_spans, lo, hi)
    return {
        "wall_s": wall,
        "model_s": model_s,
        "overhead_s": wall - model_s,
        "overhead_fraction": (wall - model_s) / wall,
        "in_handler_non_model_s": busy_s - model_s,
        "outside_handlers_s": wall - busy_s,
        "hops_s": [h.seconds for h in hops],
        "hops": [{"event": h.event_subject, "from": h.producer, "to": h.consumer, "s": h.seconds} for h in hops],
        "per_stage_sum_s": per_stage,
        "model_spans_sum_s": model_by_name,
        "spans_in_run": len(inside),
        "events": [e.type_name() for e in run.events],
    }


# -- part A: full runs -----------------------------------------------------------------------------------


def full_runs(cfg: Config, tmp: Path, report: Report) -> str:
    """Run warm-up + timed runs on one stack, add the overhead rows, return the NATS URL used."""
    max_timed = 1 if cfg.smoke else max(1, min(cfg.reps, 3))
    budget_s = 0.0 if cfg.smoke else 240.0  # stop adding full runs past this much timed wall (at least 2)
    results: list[RunResult] = []
    breakdowns: list[dict[str, Any]] = []
    with running_stack(tmp / "home", device=cfg.device) as stack:
        settings = stack.settings
        traces = stack.home / "traces.jsonl"
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
            if i > 0:
                assert result.finished is not None
                spans.wait_exported(traces, result.finished)  # the services export spans in batches
                found = spans.read(traces)
                if not any(s.kind == "model" for s in spans.within(found, result.submitted, result.finished)):
                    raise RuntimeError(f"no model spans in {traces} for run {i}: is tracing off "
                                       "(WEIGHTFLOW_TRACE_FILE=false)?")
                results.append(result)
                breakdowns.append(breakdown(found, result))
        url = settings.resolved_nats_url()
        # Part B needs the same server: run it while this stack (and its nats-server) is still up.
        latency_rows(cfg, tmp, url, report, breakdowns)
    wall = [b["wall_s"] for b in breakdowns]
    workload = "trivial minilm-l3 run (smoke)" if cfg.smoke else "examples/support-tickets (l3+l6, int8, re-bench)"
    report.add(Row("full six-stage run wall time", "s", Stat.of(wall), note=workload))
    report.add(Row("model work inside the run (union over processes)", "s",
                   Stat.of([b["model_s"] for b in breakdowns]),
                   note="model-layer spans: load + evaluate + general score + quantize + LoRA + candidate tree"))
    report.add(Row("orchestration overhead (wall − model work)", "s", Stat.of([b["overhead_s"] for b in breakdowns])))
    report.add(Row("orchestration overhead fraction of the run", "fraction",
                   Stat.of([b["overhead_fraction"] for b in breakdowns]), better="lower",
                   extra={"breakdowns": breakdowns}))
    report.add(Row("  of which: in handlers, not model (DB, hashing, serialization, outbox publish)", "s",
                   Stat.of([b["in_handler_non_model_s"] for b in breakdowns])))
    report.add(Row("  of which: outside any handler (bus hops, scheduler tick, waits)", "s",
                   Stat.of([b["outside_handlers_s"] for b in breakdowns])))
    report.config["timed_runs"] = len(breakdowns)
    stages = breakdowns[0]["per_stage_sum_s"]
    report.notes.append("Per stage in timed run 1 (handler spans; of which model spans): " + "; ".join(
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
    svc = Service("benchlat", declared=Stage(0, "benchlat", "bench latency probe", consumes=(BenchPing,), emits=()))

    @svc.handles(BenchPing)  # requires_run (the default): the bus looks the run up first, as for stage events
    def on_ping(event: BenchPing, ctx: HandlerContext) -> HandlerResult:
        signal.fire(time.perf_counter())
        return []

    app = build_app(svc, settings)
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
            # One registered run for every ping, written as the requirements service registers an accepted run.
            record = RunRecord(run_id=uuid4(), deployment="bench-latency", version=1, requirements_digest="0" * 64)
            await client.publish_raw(run_subject(record.run_id), record.model_dump_json().encode(),
                                     f"run-{record.run_id}")

            async def wf_publish(i: int) -> None:
                await client.publish(BenchPing(run_id=record.run_id, n=i))

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
        _stop_tracing()
    return samples


def _stop_tracing() -> None:
    """Building the service set this process's tracer provider (exporting to the micro home, which is about
    to be deleted); shut it down so later comparisons in this process export nothing."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


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
            report.add(Row(f"in-run stage hop p{q} (producer's outbox publish → consumer handler start)", "ms",
                           Stat.of([percentile(hops, q)]),
                           Stat.of([percentile(r, q) for r in ms["jetstream"]]),
                           "raw nats-py JetStream publish → pull fetch", "lower",
                           note=f"{len(hops)} hops from the timed runs (publish with ack + fetch + decode + handler "
                                "span; from trace context); services under model load at the time",
                           extra={"hops_ms": hops}))
    report.config.update({"latency_rounds": rounds, "latency_events_per_round": count,
                          "latency_pause_s": pause})


def run(cfg: Config) -> Report:
    report = Report(NAME, "2. Orchestration overhead (six-stage run) and event latency (vs raw nats-py)")
    with tempfile.TemporaryDirectory(prefix="wf-bench-orch-") as tmp_name:
        full_runs(cfg, Path(tmp_name), report)
    report.notes.append("Model work and handler time come from the services' own OpenTelemetry spans "
                        "(<home>/traces.jsonl: model-layer spans, and faststream's telemetry span per handled "
                        "message); nothing is injected into the services. A canary is requested by monitoring's "
                        "1 s scheduler tick (not traced: counted outside handlers), so up to ~1 s of each run is "
                        "that wait; registering runs the canary set once more (its baseline).")
    report.notes.append("Latency sides run in the bench process against the stack's own nats-server; the "
                        "weightflow side is a minimal shared.bus.Service (faststream pull consumer with telemetry, "
                        "run-registry lookup, SQLite inbox, handler in a worker thread) whose handler does nothing.")
    return report
