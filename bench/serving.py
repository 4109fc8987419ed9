"""8. Serving: `weightflow serve` under concurrent clients vs the same model called in-process.

The deployment is the support-tickets example's MiniLM-L6 (fp32), registered by hand and served by a
`weightflow serve --manifest` subprocess (the HTTP server, dynamic batching up to 8). Sides, interleaved
each repetition on the same texts (the example's eval set, one text per request):

* served, 16 concurrent clients (an aiohttp load generator in this process, as vLLM's
  benchmark_serving: keep-alive connections, about 0.2 ms of client CPU per request): requests/s, and
  per-request latency under load;
* the same with 16 httpx clients in threads (what a Python application pays: httpx spends about 3.5 ms
  of CPU per request, on the cores the server needs on a 2-core machine);
* the same, served without `--dedicated-cores` (the CLI's default, OpenMP workers sleep at once);
* in-process batched: the task's `classify` on batches of 8 (the server's batch), no HTTP: the
  throughput the server should approach (target: served >= 0.8x);
* plain transformers loop, one request at a time (`eval_throughput.PlainLoop`): what serving without
  batching gives;
* one client beside a busy process (a Python busy loop), with and without `--dedicated-cores`;
* one client (aiohttp), one request at a time: served latency vs the in-process call on one text (the
  HTTP overhead; target p95 + 5 ms at most), and the client's latency less the server's own model time.
* a language model (the language-model example's SmolLM2-135M; a tiny random Llama in --smoke): 16
  clients on /v1/completions vs `task.complete` on batches of 8, same prompts, greedy: where a request
  costs the model hundreds of milliseconds, HTTP's share is small.

On a 2-core machine the clients share the cores with the server: their CPU is part of what the served
throughput pays for, so each row notes the client CPU per request. The server's own time in the model
(`/healthz` `model_s` over `inputs`) per input against the in-process call says how much the HTTP stack slows the
model thread: on 2 cores mostly by taking a core from one of torch's two intra-op threads (a busy
process slows the in-process model as much as a busy thread does), less by the GIL. Both sides run with
the same OpenMP wait policy: OpenMP's default (this process imports torch before `shared.modeling` sets
PASSIVE, and the server runs with `--dedicated-cores`), or whatever OMP_WAIT_POLICY says. One more row
serves without `--dedicated-cores` (PASSIVE, the CLI's default): what a server sharing its cores gets.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.eval_throughput import PlainLoop
from bench.harness import EXAMPLE_DIR, Config, Report, Row, Stat, bench_env, interleave, percentile, stop, wait_ready
from weightflow.serving.live import load_served
from weightflow.serving.testing import free_port, register_checkpoint
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.settings import Settings

NAME = "serving"
DEPLOYMENT = "ticket-router"
CANDIDATE = 1  # minilm-l6
CLIENTS = 16
MAX_BATCH = 8
SINGLE = 48  # one-at-a-time requests per repetition
MAX_WAIT_MS = float(os.environ.get("WEIGHTFLOW_BENCH_MAX_WAIT_MS", "0"))  # the CLI's default


def _texts(n: int) -> list[str]:
    rows = [json.loads(line) for line in (EXAMPLE_DIR / "eval.jsonl").read_text().splitlines() if line.strip()]
    texts = [str(r["text"]) for r in rows]
    return [texts[i % len(texts)] for i in range(n)]


class Load:
    """What one run of clients measured: requests/s, per-request latencies, client CPU per request."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.client_cpu_ms: list[float] = []


def classify_body(text: str) -> tuple[str, dict[str, Any]]:
    return "/v1/classify", {"model": DEPLOYMENT, "input": text}


class AioClients(Load):
    """`n` keep-alive connections from one asyncio loop (aiohttp), one text per request."""

    def __init__(self, url: str, n: int, request: Callable[[str], tuple[str, dict[str, Any]]] = classify_body) -> None:
        super().__init__()
        self.url, self.n, self.request = url, n, request

    def run(self, texts: Sequence[str]) -> float:
        async def go() -> float:
            queue = list(reversed(texts))
            connector = aiohttp.TCPConnector(limit=self.n)
            async with aiohttp.ClientSession(connector=connector) as session:
                async def worker() -> None:
                    while queue:
                        path, body = self.request(queue.pop())
                        start = time.perf_counter()
                        async with session.post(self.url + path, json=body) as r:
                            await r.read()
                            if r.status != 200:
                                raise RuntimeError(f"the server answered {r.status}: {(await r.text())[:200]}")
                        self.latencies_ms.append((time.perf_counter() - start) * 1000)

                start = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(self.n)))
                return len(texts) / (time.perf_counter() - start)

        cpu = time.process_time()
        rps = asyncio.run(go())
        self.client_cpu_ms.append((time.process_time() - cpu) / len(texts) * 1000)
        return rps


class HttpxClients(Load):
    """`n` threads, each with an httpx client (keep-alive), sending one text per request."""

    def __init__(self, url: str, n: int) -> None:
        super().__init__()
        self.url, self.n = url, n

    def run(self, texts: Sequence[str]) -> float:
        lock = threading.Lock()
        queue = list(reversed(texts))
        errors: list[str] = []

        def worker() -> None:
            with httpx.Client(timeout=120) as client:
                while True:
                    with lock:
                        if not queue:
                            return
                        text = queue.pop()
                    start = time.perf_counter()
                    r = client.post(self.url + "/v1/classify", json={"model": DEPLOYMENT, "input": text})
                    elapsed = (time.perf_counter() - start) * 1000
                    with lock:
                        self.latencies_ms.append(elapsed)
                        if r.status_code != 200:
                            errors.append(r.text[:200])

        threads = [threading.Thread(target=worker) for _ in range(self.n)]
        cpu, start = time.process_time(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        self.client_cpu_ms.append((time.process_time() - cpu) / len(texts) * 1000)
        if errors:
            raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
        return len(texts) / seconds


class ServerTally:
    """What the server says it ran (`/healthz`) around each run of one side: batches, inputs, and its
    time in the model per input."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.batches = self.inputs = 0
        self.model_ms_per_input: list[float] = []

    def around(self, run: Callable[[], float]) -> Callable[[], float]:
        def go() -> float:
            before = httpx.get(self.url + "/healthz").json()
            value = run()
            after = httpx.get(self.url + "/healthz").json()
            inputs = after["inputs"] - before["inputs"]
            self.batches += after["batches"] - before["batches"]
            self.inputs += inputs
            self.model_ms_per_input.append((after["model_s"] - before["model_s"]) / inputs * 1000)
            return value
        return go

    @property
    def mean_batch(self) -> float:
        return self.inputs / self.batches if self.batches else 0.0


@contextmanager
def serving(home: Path, deployment: str, manifest_id: str, device: str, *, dedicated: bool = True) -> Iterator[str]:
    """`weightflow serve --manifest` in its own process with the CLI's defaults, and `--dedicated-cores`
    unless told otherwise (the in-process baseline runs with the same OpenMP policy); yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = bench_env() | {"WEIGHTFLOW_HOME": str(home), "WEIGHTFLOW_DEVICE": device}
    proc = subprocess.Popen([sys.executable, "-m", "weightflow.cli", "serve", deployment, "--manifest",
                             manifest_id, "--port", str(port), "--max-batch", str(MAX_BATCH),
                             "--max-wait-ms", str(MAX_WAIT_MS)] + (["--dedicated-cores"] if dedicated else []),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        yield url
    finally:
        stop(proc)


def run(cfg: Config) -> Report:
    report = Report(NAME, f"Serving: weightflow serve ({CLIENTS} clients, dynamic batching to {MAX_BATCH}) vs "
                          "in-process")
    n_requests = 32 if cfg.smoke else 256
    texts = _texts(n_requests)
    single = texts[:SINGLE]  # one-at-a-time requests per repetition (fewer in --smoke)
    with tempfile.TemporaryDirectory(prefix="wf-bench-serve-") as tmp:
        home = Path(tmp) / "home"
        settings = Settings(home=home, trace_file=False)
        store = ArtifactStore(settings.resolved_artifacts_dir())
        manifest_id = register_checkpoint(store, EXAMPLE_DIR / "requirements.yaml", candidate=CANDIDATE)
        served = load_served(store, DEPLOYMENT, manifest_id, cfg.device)
        task, spec, loaded = served.task, served.spec, served.loaded
        plain = PlainLoop.load(loaded.model_dir, loaded.device)
        labels = list(spec.labels or {})
        prototypes = plain.embed([(spec.labels or {})[name] for name in labels])

        def in_process_batched() -> float:
            start = time.perf_counter()
            for i in range(0, len(texts), MAX_BATCH):
                task.runtime().classify(loaded, spec, texts[i: i + MAX_BATCH])
            seconds = time.perf_counter() - start
            in_process_input_ms.append(seconds / len(texts) * 1000)
            return len(texts) / seconds

        def plain_one_at_a_time() -> float:
            start = time.perf_counter()
            for text in texts:
                int((plain.embed([text]) @ prototypes.T).argmax())
            return len(texts) / (time.perf_counter() - start)

        in_process_input_ms: list[float] = []
        in_process_ms: list[float] = []

        def in_process_single() -> float:
            for text in single:
                start = time.perf_counter()
                task.runtime().classify(loaded, spec, [text])
                in_process_ms.append((time.perf_counter() - start) * 1000)
            return 0.0

        with serving(home, DEPLOYMENT, manifest_id, cfg.device) as url, \
                serving(home, DEPLOYMENT, manifest_id, cfg.device, dedicated=False) as shared_url:
            loaded_clients = AioClients(url, CLIENTS)
            shared_clients = AioClients(shared_url, CLIENTS)
            httpx_clients = HttpxClients(url, CLIENTS)
            one_client = AioClients(url, 1)
            loaded_tally, single_tally = ServerTally(url), ServerTally(url)

            def served_single() -> float:
                one_client.run(single)
                return 0.0

            served_rps, shared_rps, httpx_rps, batched_rps, plain_rps, _, _ = interleave(
                [loaded_tally.around(lambda: loaded_clients.run(texts)), lambda: shared_clients.run(texts),
                 lambda: httpx_clients.run(texts),
                 in_process_batched, plain_one_at_a_time, single_tally.around(served_single), in_process_single],
                cfg.reps)
            busy_rows = _beside_a_busy_process(cfg, url, shared_url, single)
        generation_rows = _generation(cfg, Path(tmp), store, home)

    aio_cpu = percentile(loaded_clients.client_cpu_ms[1:], 50)  # less the warm-up (first session)
    httpx_cpu = percentile(httpx_clients.client_cpu_ms[1:], 50)
    report.add(Row(f"throughput, served ({CLIENTS} clients) vs in-process batched", "requests/s", Stat.of(served_rps),
                   Stat.of(batched_rps), f"task.classify, batches of {MAX_BATCH}", "higher",
                   f"target: ratio >= 0.8; aiohttp clients, {aio_cpu:.2f} ms client CPU per request"))
    report.add(Row(f"throughput, served without --dedicated-cores ({CLIENTS} clients) vs in-process batched",
                   "requests/s", Stat.of(shared_rps), Stat.of(batched_rps), f"task.classify, batches of {MAX_BATCH}",
                   "higher", "the default: OMP_WAIT_POLICY=PASSIVE in the server, safe beside busy processes"))
    report.add(Row(f"throughput, served ({CLIENTS} clients) vs one request at a time", "requests/s",
                   Stat.of(served_rps), Stat.of(plain_rps), "plain transformers loop, batch 1", "higher"))
    report.add(Row(f"throughput, served ({CLIENTS} httpx clients in threads) vs in-process batched", "requests/s",
                   Stat.of(httpx_rps), Stat.of(batched_rps), f"task.classify, batches of {MAX_BATCH}", "higher",
                   f"httpx: {httpx_cpu:.2f} ms client CPU per request, on the server's cores"))
    report.add(Row(f"model time per input in the server ({CLIENTS} clients) vs in-process", "ms",
                   Stat.of(loaded_tally.model_ms_per_input[1:]), Stat.of(in_process_input_ms[1:]),  # less the warm-up
                   f"task.classify, batches of {MAX_BATCH}", "lower",
                   "same texts, batches of up to 8 in the server; the difference is the HTTP stack and the "
                   "clients on the model's cores"))
    # the warm-up round's latencies are dropped: interleave runs every side once unrecorded first
    n = len(single)
    single_ms, in_ms = one_client.latencies_ms[n:], in_process_ms[n:]
    overhead_p50 = percentile(single_ms, 50) - percentile(in_ms, 50)
    overhead_p95 = percentile(single_ms, 95) - percentile(in_ms, 95)
    report.add(Row("latency p50, one client, one text", "ms", Stat.of([percentile(single_ms, 50)]),
                   Stat.of([percentile(in_ms, 50)]), "in-process task.classify on one text", "lower",
                   f"HTTP overhead {overhead_p50:+.1f} ms"))
    report.add(Row("latency p95, one client, one text", "ms", Stat.of([percentile(single_ms, 95)]),
                   Stat.of([percentile(in_ms, 95)]), "in-process task.classify on one text", "lower",
                   f"HTTP overhead {overhead_p95:+.1f} ms (target <= 5 ms)"))
    # what the client waited beyond the server's own model call, same requests, per repetition (means:
    # the server reports its model time summed)
    per_rep = [sum(one_client.latencies_ms[i * n:(i + 1) * n]) / n - model
               for i, model in enumerate(single_tally.model_ms_per_input) if i > 0]
    report.add(Row("one client: mean latency minus the server's mean model time", "ms", Stat.of(per_rep),
                   note="HTTP, validation, queueing and thread hand-offs, without the model's own drift"))
    loaded_ms = loaded_clients.latencies_ms[n_requests:]
    report.add(Row(f"latency under {CLIENTS} clients (p50 / p95)", "ms",
                   Stat.of([percentile(loaded_ms, 50), percentile(loaded_ms, 95)]), note="n = 2 values: p50, p95"))
    report.add(Row(f"mean batch the server ran for {CLIENTS} clients", "inputs", Stat.of([loaded_tally.mean_batch]),
                   note=f"{loaded_tally.batches} batches, every repetition and the warm-up; at most {MAX_BATCH}"))
    for row in busy_rows + generation_rows:
        report.add(row)
    report.notes.append(f"{n_requests} requests per repetition, {cfg.reps} repetitions after one warm-up, device "
                        f"{cfg.device}; the clients run in the bench process, the server in its own.")
    report.config.update(requests=n_requests, clients=CLIENTS, max_batch=MAX_BATCH, single=n)
    return report


def _beside_a_busy_process(cfg: Config, dedicated_url: str, shared_url: str, texts: Sequence[str]) -> list[Row]:
    """One client, one text at a time, while another process keeps a core busy (a Python busy loop): what
    `--dedicated-cores` costs a server that in fact shares its cores."""
    dedicated, shared = AioClients(dedicated_url, 1), AioClients(shared_url, 1)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        interleave([lambda: dedicated.run(texts), lambda: shared.run(texts)], cfg.reps)
    finally:
        burner.kill()
        burner.wait()
    n = len(texts)  # less the warm-up round
    with_spin, passive = dedicated.latencies_ms[n:], shared.latencies_ms[n:]
    return [Row(f"beside a busy process, one client: latency {q}, --dedicated-cores vs without", "ms",
                Stat.of([percentile(with_spin, p)]), Stat.of([percentile(passive, p)]),
                "the CLI's default (PASSIVE)", "lower", "a Python busy loop in another process on the same cores")
            for q, p in (("p50", 50), ("p95", 95))]


# -- a language model: /v1/completions vs task.complete ----------------------------------------------
def _language_model(cfg: Config, tmp: Path) -> tuple[Path, list[str]]:
    """A requirements doc for the LM to serve, and the inputs to send it. Full: the language-model
    example's orders.yaml on SmolLM2-135M (its models are made first if missing, as the e2e test does);
    --smoke: a tiny random Llama made by code."""
    from bench.lm_schemes import FULL_MODEL, LM_DIR
    from tests.lm_fixtures import tiny_lm_deployment

    rows = [json.loads(line) for line in (LM_DIR / "orders-eval.jsonl").read_text().splitlines() if line.strip()]
    inputs = [str(r["input"]) for r in rows]
    if not cfg.smoke:
        if not (FULL_MODEL / "config.json").is_file():
            print(f"  making {FULL_MODEL.relative_to(LM_DIR)} (examples/language-models/make_models.py) …", flush=True)
            subprocess.run([sys.executable, str(LM_DIR / "make_models.py")], check=True, env=bench_env())
        return LM_DIR / "orders.yaml", inputs
    return tiny_lm_deployment(tmp / "tiny-lm", inputs), inputs


def _generation(cfg: Config, tmp: Path, store: ArtifactStore, home: Path) -> list[Row]:
    """16 clients on /v1/completions against `task.complete` on batches of 8: the same prompts, the same
    greedy decoding, so the same tokens. Where the model's time per request is large, HTTP's share is small."""
    from weightflow.shared.modeling.protocols import CompletionParams
    from weightflow.shared.modeling.tasks.language import render_prompt

    doc, inputs = _language_model(cfg, tmp)
    n_requests = 16 if cfg.smoke else 128  # a burst starts with a lone pass: more requests, less of that
    candidate = 1 if not cfg.smoke else 0  # orders.yaml: [smollm2-135m-l8, smollm2-135m]
    manifest_id = register_checkpoint(store, doc, candidate=candidate)
    served = load_served(store, served_name(store, manifest_id), manifest_id, cfg.device)
    task, spec, loaded = served.task, served.spec, served.loaded
    prompts = [render_prompt(spec, inputs[i % len(inputs)]) for i in range(n_requests)]
    params = CompletionParams(max_tokens=spec.max_new_tokens)
    input_ms: list[float] = []

    def in_process_batched() -> float:
        start = time.perf_counter()
        for i in range(0, len(prompts), MAX_BATCH):
            task.runtime().complete(loaded, spec, prompts[i: i + MAX_BATCH], params)
        seconds = time.perf_counter() - start
        input_ms.append(seconds / len(prompts) * 1000)
        return len(prompts) / seconds

    def completion(prompt: str) -> tuple[str, dict[str, Any]]:
        return "/v1/completions", {"model": served.deployment, "prompt": prompt, "max_tokens": spec.max_new_tokens}

    with serving(home, served.deployment, manifest_id, cfg.device) as url:
        clients = AioClients(url, CLIENTS, completion)
        tally = ServerTally(url)
        served_rps, batched_rps = interleave([tally.around(lambda: clients.run(prompts)), in_process_batched], cfg.reps)
    what = f"{served.manifest.candidate}, {spec.max_new_tokens} new tokens, greedy"
    return [
        Row(f"generation: throughput, served ({CLIENTS} clients) vs in-process batched", "requests/s",
            Stat.of(served_rps), Stat.of(batched_rps), f"task.complete, batches of {MAX_BATCH}", "higher",
            f"{what}; /v1/completions, {n_requests} prompts per repetition"),
        Row("generation: model time per input in the server vs in-process", "ms", Stat.of(tally.model_ms_per_input[1:]),
            Stat.of(input_ms[1:]), f"task.complete, batches of {MAX_BATCH}", "lower",
            f"mean batch {tally.mean_batch:.2f} of {MAX_BATCH} ({tally.batches} batches)"),
    ]


def served_name(store: ArtifactStore, manifest_id: str) -> str:
    from weightflow.shared.modeling.stored import read_manifest

    return read_manifest(store, manifest_id).deployment
