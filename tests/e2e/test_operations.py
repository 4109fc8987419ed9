"""What operators watch, on real processes: the six services and `weightflow serve` export spans over OTLP to
a real receiver (HTTP for the stack, gRPC for the server) and are scraped by Debian's real Prometheus, which
finds them through the file_sd targets they announce; `weightflow doctor` reads every `/readyz`.

One run of a tiny language model through every stage, then one served request that carries a caller's trace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from weightflow.contracts.base import Event
from weightflow.operations import write_prometheus_config
from weightflow.serving.testing import free_port
from weightflow.submission import prepare

from ..conftest import LiveStack, start_stack
from ..lm_fixtures import tiny_lm_deployment
from ..otlp_receiver import ReceivedSpan, Spans, grpc_receiver, http_receiver
from .test_e2e_serve import wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMETHEUS = shutil.which("prometheus")
SERVICES = {"requirements", "benchmark", "fitting", "tuning", "registry", "monitoring"}
UNBOUNDED = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-|[0-9a-f]{32,}|^wf\.|^wfruns\.")
SPAN_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "200"}


@dataclass
class Watched:
    live: LiveStack
    run: list[Event]
    stack_spans: Spans
    serve_spans: Spans
    prometheus: str
    serve_url: str
    caller: tuple[str, str]  # the trace id and span id a client sent in `traceparent`
    env: dict[str, str]


def prometheus_server(config: Path, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    assert PROMETHEUS is not None
    port = free_port()
    log = (data.parent / "prometheus.log").open("wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("prometheus did not become ready")


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    body = httpx.get(prometheus + "/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def eventually(fn: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    root = tmp_path_factory.mktemp("ops")
    with http_receiver() as (stack_otlp, stack_spans), grpc_receiver() as (serve_otlp, serve_spans):
        live = start_stack(root / "home", WEIGHTFLOW_CANARY_INTERVAL_S=3600, WEIGHTFLOW_ACK_WAIT_S=20,
                           WEIGHTFLOW_METRICS_INTERVAL_S=1, OTEL_EXPORTER_OTLP_ENDPOINT=stack_otlp, **SPAN_ENV)
        config = write_prometheus_config(root / "prometheus", live.settings.home, interval_s=1)
        prom, prom_url = prometheus_server(config, root / "prometheus" / "data")
        serve: subprocess.Popen[str] | None = None
        try:
            doc = tiny_lm_deployment(root / "tiny")
            doc.write_text(doc.read_text().replace("threshold: 0.5", "threshold: 0.0"))
            tracker = live.run(prepare(doc, live.store).event, timeout=600)
            assert tracker.outcome == "succeeded", f"{[e.type_name() for e in tracker.events]}\n{live.logs()}"
            env = dict(os.environ, WEIGHTFLOW_HOME=str(live.settings.home),
                       WEIGHTFLOW_NATS_URL=str(live.settings.nats_url))
            port = free_port()
            serve = subprocess.Popen(
                [sys.executable, "-m", "weightflow.cli", "serve", "tiny-lm", "--port", str(port), "--no-announce"],
                env=env | {"WEIGHTFLOW_OPS_PORT": "0", "OTEL_EXPORTER_OTLP_ENDPOINT": serve_otlp,
                           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **SPAN_ENV},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, serve)
            trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
            answer = httpx.post(url + "/v1/completions", timeout=60,
                                headers={"traceparent": f"00-{trace_id}-{span_id}-01"},
                                json={"model": "tiny-lm", "prompt": "Q: what is 1 plus one?\nA:", "max_tokens": 4})
            assert answer.status_code == 200, answer.text
            with httpx.stream("POST", url + "/v1/completions", timeout=60,
                              json={"model": "tiny-lm", "prompt": "Q: 2?\nA:", "max_tokens": 4, "stream": True}) as r:
                assert r.status_code == 200 and "[DONE]" in r.read().decode()
            yield Watched(live, tracker.events, stack_spans, serve_spans, prom_url, url, (trace_id, span_id), env)
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(timeout=30)
            prom.terminate()
            prom.wait(timeout=30)
            live.stack.stop()


def by_trace(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    traces: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    return traces


# The tiny LM passes at once, so its run never needs tuning: routes are event types (a FitCompleted goes to the
# registry alone), and the tuning service takes no part in it.
PASSED_THROUGH = SERVICES - {"tuning"}


def test_a_run_is_one_linked_trace_across_every_service_it_passes_through(watched: Watched) -> None:
    def run_trace() -> list[ReceivedSpan] | None:
        for spans in by_trace(watched.stack_spans.snapshot()).values():
            names = {s.name for s in spans}
            services = {s.service.removeprefix("weightflow-") for s in spans}
            if "wf.requirements.submitted process" in names and services >= PASSED_THROUGH:
                assert "tuning" not in services, "a run that needs no tuning is never delivered to tuning"
                return spans
        return None

    try:
        spans = eventually(run_trace, what="the run's trace with spans from the five services it passes through")
    except AssertionError:
        summary = [(len(t), sorted({s.service for s in t}), sorted({s.name for s in t})[:12])
                   for t in by_trace(watched.stack_spans.snapshot()).values()]
        raise AssertionError(
            f"no such trace among {len(summary)}: {sorted(summary, key=lambda x: -x[0])[:8]}") from None
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None or s.parent_id not in ids]
    assert len(roots) == 1 and roots[0].name.startswith("wf.requirements.submitted"), "one root: the submission"
    # every hop: each consumer span hangs from the producer's publish, whose parent is the producer's handler
    consumed = [s for s in spans if s.name.endswith(" process") and s.name != "wf.requirements.submitted process"]
    parents = {s.span_id: s for s in spans}
    for span in consumed:
        create = parents[str(span.parent_id)]
        assert create.name.endswith((" create", " publish")), (span.name, create.name)
    hop_services = {s.service.removeprefix("weightflow-") for s in consumed}
    assert hop_services >= PASSED_THROUGH - {"requirements"}, hop_services
    model = [s for s in spans if s.name.startswith(("task.", "source.", "quantizer.", "tuner."))]
    assert {"task.load", "task.evaluate"} <= {s.name for s in model}, sorted({s.name for s in model})
    for span in model:  # model work sits inside a handler's span
        chain = span
        while chain.parent_id in parents and not chain.name.endswith(" process"):
            chain = parents[str(chain.parent_id)]
        assert chain.name.endswith(" process"), span.name
    # GenAI conventions: every evaluation records its score as a gen_ai.evaluation.result event
    evaluations = [s for s in spans if s.name == "task.evaluate"]
    results = [attrs for s in evaluations for name, attrs in s.events if name == "gen_ai.evaluation.result"]
    assert len(results) == len(evaluations) >= 1
    assert results[0]["gen_ai.evaluation.name"] == "exact_match"
    assert 0.0 <= results[0]["gen_ai.evaluation.score.value"] <= 1.0
    assert results[0]["weightflow.evaluation.rows"] == 12
    assert str(evaluations[0].attributes["gen_ai.request.model"]).startswith("tree:")
    # a canary (the first one after promotion too) is scheduled: a trace of its own, from request to verdict
    canary_spans = {"wf.monitoring.canary_requested process", "wf.monitoring.canary_passed create"}
    canary = [t for t in by_trace(watched.stack_spans.snapshot()).values() if canary_spans <= {s.name for s in t}]
    assert canary and "task.evaluate" in {s.name for s in canary[0]}


def test_a_served_request_joins_the_callers_trace(watched: Watched) -> None:
    trace_id, span_id = watched.caller

    def server_span() -> ReceivedSpan | None:
        return next((s for s in watched.serve_spans.snapshot()
                     if s.trace_id == trace_id and s.parent_id == span_id), None)

    span = eventually(server_span, what="the server span of the traced request")
    assert span.service == "weightflow-serve"
    assert span.attributes["gen_ai.operation.name"] == "text_completion"
    assert span.attributes["gen_ai.request.model"] == "tiny-lm" and span.attributes["gen_ai.request.max_tokens"] == 4
    assert span.attributes["gen_ai.usage.output_tokens"] >= 1 and span.attributes["gen_ai.response.finish_reasons"]
    assert str(span.attributes["gen_ai.response.id"]).startswith("cmpl-")
    joined = {s.span_id: s for s in watched.serve_spans.snapshot() if s.trace_id == trace_id}
    passes = [s for s in joined.values() if s.name == "serve.batch"]
    assert passes, "the model pass that answered it is in the caller's trace too"
    [model] = [s for s in joined.values() if s.parent_id == passes[0].span_id]
    assert model.name == "task.complete" and model.attributes["gen_ai.operation.name"] == "text_completion"
    assert model.attributes["gen_ai.usage.output_tokens"] >= 1


def test_prometheus_scrapes_every_service_and_the_server(watched: Watched) -> None:
    prom = watched.prometheus

    def all_up() -> list[dict[str, Any]] | None:
        up = query(prom, 'up{job="weightflow"} == 1')
        return up if len(up) >= 7 else None

    up = eventually(all_up, what="seven targets up (six services and the server)")
    assert {u["metric"]["service"] for u in up} == SERVICES | {"serve"}
    eventually(lambda: query(prom, 'weightflow_canary_passed{deployment="tiny-lm"} == 1'), what="canary gauge")
    assert float(query(prom, "sum(weightflow_runs_started_total)")[0]["value"][1]) >= 1
    assert query(prom, 'sum(weightflow_runs_ended_total{outcome="promoted"}) >= 1')
    score = query(prom, 'weightflow_canary_score{deployment="tiny-lm"}')
    assert len(score) == 1 and 0.0 <= float(score[0]["value"][1]) <= 1.0
    assert query(prom, 'weightflow_canary_score_interval_high{deployment="tiny-lm"}')
    assert query(prom, 'time() - weightflow_canary_last_timestamp_seconds{deployment="tiny-lm"} < 3600')
    handled = query(prom, 'sum by (service) (weightflow_events_consumed_total{outcome="handled"})')
    assert {h["metric"]["service"] for h in handled} == PASSED_THROUGH  # tuning was delivered nothing to handle
    assert len(query(prom, "weightflow_service_ready == 1")) == 6
    assert query(prom, "weightflow_handler_duration_seconds_count")
    assert query(prom, "weightflow_consumer_pending_messages")
    assert query(prom, "weightflow_outbox_unpublished_events")
    # the server
    eventually(lambda: query(prom, 'weightflow_serve_requests_total{route="/v1/completions",status="200"} >= 2'),
               what="the server's request counter")
    assert query(prom, 'weightflow_serve_tokens_total{type="output"} > 0')
    assert query(prom, "weightflow_serve_time_to_first_token_seconds_count > 0"), "the streamed request"
    assert query(prom, "weightflow_serve_time_per_output_token_seconds_count > 0")
    assert query(prom, "weightflow_serve_model_parameter_bytes > 0")
    assert query(prom, 'weightflow_serve_batch_size_count{kind="completions"} >= 2')
    # no label anywhere carries an id or a subject, and none grows with traffic
    series = httpx.get(prom + "/api/v1/series", params={"match[]": '{__name__=~"weightflow_.+"}'}, timeout=5).json()
    values: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in series["data"]:
        for label, value in s.items():
            if label not in ("__name__", "instance", "pid"):
                assert not UNBOUNDED.search(value), (s["__name__"], label, value)
                values[(s["__name__"], label)].add(value)
    assert values and max(len(v) for v in values.values()) <= 40, max(values.items(), key=lambda kv: len(kv[1]))


def test_doctor_reads_every_processs_readiness(watched: Watched) -> None:
    out = subprocess.run([sys.executable, "-m", "weightflow.cli", "doctor"], env=watched.env, capture_output=True,
                         text=True, timeout=120)
    text = out.stdout + out.stderr
    for name in SERVICES | {"serve"}:
        assert re.search(rf"ok\s+{name}-\d+ ready", text), text
    assert "Traceback" not in text
