"""`weightflow serve`'s HTTP API over real weights on a real port: an encoder deployment (classify, embed)
and a tiny language model (completions, chat); errors, auth, limits and batching."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from weightflow.serving.app import MANIFEST_HEADER
from weightflow.serving.schemas import MAX_INPUTS
from weightflow.serving.testing import ServerThread, register_checkpoint
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.stored import load_deployment, read_manifest, task_of
from weightflow.shared.settings import Settings

from ..conftest import EXAMPLE_DIR
from ..lm_fixtures import tiny_lm_deployment

pytestmark = pytest.mark.slow

TEXTS = ["I was charged twice for my order", "the app crashes when I open settings", "where is my parcel?"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("serve") / "home", trace_file=False)


@pytest.fixture(scope="module")
def encoder(home: Settings) -> str:
    return register_checkpoint(ArtifactStore(home.resolved_artifacts_dir()), EXAMPLE_DIR / "requirements.yaml")


@pytest.fixture(scope="module")
def encoder_server(home: Settings, encoder: str) -> Iterator[ServerThread]:
    with ServerThread(home, "ticket-router", encoder) as server:
        yield server


@pytest.fixture(scope="module")
def language_model(home: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    doc = tiny_lm_deployment(tmp_path_factory.mktemp("tiny-lm"))
    return register_checkpoint(ArtifactStore(home.resolved_artifacts_dir()), doc)


@pytest.fixture(scope="module")
def lm_server(home: Settings, language_model: str) -> Iterator[ServerThread]:
    with ServerThread(home, "tiny-lm", language_model) as server:
        yield server


def post(server: ServerThread, path: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kw)  # type: ignore[arg-type]


# -- classification deployments ------------------------------------------------------------------
def test_classify_answers_what_predict_answers_with_every_label_probability(encoder_server: ServerThread,
                                                                            home: Settings, encoder: str) -> None:
    r = post(encoder_server, "/v1/classify", {"model": "ticket-router", "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers[MANIFEST_HEADER] == encoder
    store = ArtifactStore(home.resolved_artifacts_dir())
    manifest = read_manifest(store, encoder)
    spec = manifest.requirements.task
    expected = task_of(spec).runtime().predict(load_deployment(store, manifest, "cpu"), spec, TEXTS)
    assert [d["label"] for d in body["data"]] == expected
    for item in body["data"]:
        assert set(item["scores"]) == set(spec.labels or {})
        assert sum(item["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert max(item["scores"], key=item["scores"].get) == item["label"]
    assert body["usage"]["prompt_tokens"] > len(TEXTS) and body["model"] == "ticket-router"
    single = post(encoder_server, "/v1/classify", {"model": "ticket-router", "input": TEXTS[0]}).json()
    assert single["data"][0]["label"] == expected[0]


def test_embeddings_as_floats_and_base64_are_the_same_unit_vectors(encoder_server: ServerThread) -> None:
    floats = post(encoder_server, "/v1/embeddings", {"model": "ticket-router", "input": TEXTS}).json()
    packed = post(encoder_server, "/v1/embeddings",
                  {"model": "ticket-router", "input": TEXTS, "encoding_format": "base64"}).json()
    a = np.array([d["embedding"] for d in floats["data"]])
    b = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]])
    assert a.shape == (3, 384) and np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]


def test_routes_the_task_does_not_serve_and_other_models_are_404_with_what_is_served(
        encoder_server: ServerThread, encoder: str) -> None:
    r = post(encoder_server, "/v1/completions", {"model": "ticket-router", "prompt": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unsupported_endpoint"
    assert "/v1/classify" in r.json()["error"]["message"]
    r = post(encoder_server, "/v1/classify", {"model": "gpt-4o", "input": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert post(encoder_server, "/v1/classify", {"model": encoder, "input": "hi"}).status_code == 200
    models = httpx.get(encoder_server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["ticket-router"] and models[0]["manifest_id"] == encoder
    assert set(models[0]["endpoints"]) == {"/v1/classify", "/v1/embeddings"}
    assert httpx.get(encoder_server.url + "/v1/nothing").status_code == 404


BAD_BODIES = [
    ({"input": "no model"}, "model"),
    ({"model": "ticket-router"}, "input"),
    ({"model": "ticket-router", "input": 42}, "input"),
    ({"model": "ticket-router", "input": []}, "input"),
    ({"model": "ticket-router", "input": ["x"] * (MAX_INPUTS + 1)}, "input"),
    ({"model": "ticket-router", "input": "x" * 20_000}, "input"),
    ({"model": "ticket-router", "input": "x", "temperature": 0.5}, "temperature"),  # unknown field
    ({"model": "ticket-router", "input": [None]}, "input"),
    ([1, 2, 3], None),
    ("just a string", None),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_bad_requests_are_400_with_a_json_error_naming_the_field(encoder_server: ServerThread, body: object,
                                                                 param: str | None) -> None:
    r = post(encoder_server, "/v1/classify", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert param in (error["param"] or "") + error["message"]


def test_malformed_json_oversized_bodies_and_wrong_methods_are_4xx(encoder_server: ServerThread) -> None:
    url = encoder_server.url + "/v1/classify"
    r = httpx.post(url, content=b'{"model": "ticket-router", "input": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(url, content=b"\xff\xfe garbage", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(url, content=b"x" * (5 * 2**20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked(megabytes: int) -> Iterator[bytes]:  # no Content-Length: the server counts what arrives
        yield b'{"model": "ticket-router", "input": "'
        for _ in range(megabytes):
            yield b"ab " * (2**20 // 3)
        yield b'"}'

    r = httpx.post(url, content=chunked(64), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(url, content=iter([b'{"model": "ticket-router", ', b'"input": "I was charged twice"}']),
                   headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["data"][0]["label"]
    r = httpx.get(url)
    assert r.status_code == 405 and "error" in r.json()


def test_concurrent_requests_share_batches_and_get_their_own_answers(encoder_server: ServerThread) -> None:
    texts = [f"{t} (ticket {i})" for i, t in enumerate(TEXTS * 8)]
    alone = [post(encoder_server, "/v1/classify", {"model": "ticket-router", "input": t}).json()["data"][0]
             for t in texts[:6]]
    before = httpx.get(encoder_server.url + "/healthz").json()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: post(encoder_server, "/v1/classify",
                                               {"model": "ticket-router", "input": t}), texts))
    after = httpx.get(encoder_server.url + "/healthz").json()
    assert all(a.status_code == 200 for a in answers)
    together = [a.json()["data"][0] for a in answers]
    assert [t["label"] for t in together[:6]] == [a["label"] for a in alone]
    for t, a in zip(together[:6], alone, strict=True):
        assert t["scores"] == pytest.approx(a["scores"], abs=1e-4)
    batches = after["batches"] - before["batches"]
    assert batches < len(texts), "some requests shared a forward pass"


def test_health_and_readiness(encoder_server: ServerThread, encoder: str) -> None:
    health = httpx.get(encoder_server.url + "/healthz").json()
    assert health["status"] == "ok" and health["manifest_id"] == encoder and health["pinned"]
    ready = httpx.get(encoder_server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["manifest_id"] == encoder


def test_each_request_is_one_server_span_and_probes_are_not_traced(home: Settings, encoder: str) -> None:
    """Operators see every request (route, status) as one span, not a span per dependency, endpoint and
    serialisation step (FastAPI's operation spans slowed the model thread under load, bench §8);
    a load balancer's probes would drown the trace, so /healthz and /readyz are not traced."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with ServerThread(home, "ticket-router", encoder, tracer_provider=provider) as server:
        assert post(server, "/v1/classify", {"model": "ticket-router", "input": TEXTS[0]}).status_code == 200
        caller = "4bf92f3577b34da6a3ce929d0e0e4736"  # a caller's trace, joined by its W3C traceparent header
        assert httpx.post(server.url + "/v1/classify", json={"model": "nope", "input": TEXTS[0]},
                          headers={"traceparent": f"00-{caller}-00f067aa0ba902b7-01"}).status_code == 404
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert httpx.get(server.url + "/readyz").status_code == 200
    finished = spans.get_finished_spans()
    assert [(s.kind, (s.attributes or {}).get("http.route"), (s.attributes or {}).get("http.response.status_code"))
            for s in finished] == [(SpanKind.SERVER, "/v1/classify", 200), (SpanKind.SERVER, "/v1/classify", 404)]
    assert format(finished[1].context.trace_id, "032x") == caller


def test_api_key_guards_the_model_routes_only(home: Settings, encoder: str) -> None:
    with ServerThread(home, "ticket-router", encoder, api_key="s3cret") as server:
        body = {"model": "ticket-router", "input": "hi"}
        assert post(server, "/v1/classify", body).status_code == 401
        wrong = post(server, "/v1/classify", body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert "s3cret" not in wrong.text
        assert post(server, "/v1/classify", body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(server.url + "/v1/models").status_code == 401
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_a_corrupt_manifest_is_refused_and_the_current_model_keeps_serving(home: Settings, encoder: str,
                                                                          tmp_path: Path) -> None:
    import asyncio

    store = ArtifactStore(home.resolved_artifacts_dir())
    other = register_checkpoint(store, EXAMPLE_DIR / "requirements.yaml", candidate=1)
    weights = store.path_of(read_manifest(store, other).model.files["model.safetensors"])
    backup = tmp_path / "weights"
    shutil.copy(weights, backup)
    with ServerThread(home, "ticket-router", encoder) as server:
        try:
            weights.chmod(0o644)
            with weights.open("r+b") as f:
                f.seek(-16, 2)
                f.write(b"\0" * 16)
            assert server.loop is not None  # the switch runs as the follower runs it, on the server's loop
            asyncio.run_coroutine_threadsafe(server.live.switch(other), server.loop).result(timeout=120)
        finally:
            shutil.copy(backup, weights)
        health = httpx.get(server.url + "/healthz").json()
        assert health["manifest_id"] == encoder and health["swaps"] == 0
        assert other[:12] in health["last_error"] and "IntegrityError" in health["last_error"]
        assert post(server, "/v1/classify", {"model": "ticket-router", "input": "hi"}).status_code == 200


class HeldTask:
    """The live task (spec and runtime in one), with its first model call held at `gate`: later requests queue
    behind it."""

    def __init__(self, task: Any) -> None:
        self.task, self.entered, self.gate = task, threading.Event(), threading.Event()
        self.inputs: list[str] = []

    def runtime(self) -> HeldTask:
        return self

    def __getattr__(self, name: str) -> Any:
        runtime = self.task.runtime()
        return getattr(runtime if hasattr(runtime, name) else self.task, name)

    def _run(self, method: str, loaded: Any, spec: Any, inputs: Any, *args: Any, **kw: Any) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            self.gate.wait(30)
        self.inputs += list(inputs)
        return getattr(self.task.runtime(), method)(loaded, spec, inputs, *args, **kw)

    def classify(self, *args: Any, **kw: Any) -> Any:
        return self._run("classify", *args, **kw)

    def embeddings(self, *args: Any, **kw: Any) -> Any:
        return self._run("embeddings", *args, **kw)

    def complete(self, *args: Any, **kw: Any) -> Any:
        return self._run("complete", *args, **kw)


@pytest.mark.parametrize(("which", "path", "body"), [
    ("encoder_server", "/v1/classify", {"model": "ticket-router", "input": "{}"}),
    ("encoder_server", "/v1/embeddings", {"model": "ticket-router", "input": ["{}", "and another"]}),
    ("lm_server", "/v1/completions", {"model": "tiny-lm", "prompt": "{}", "max_tokens": 2}),
    ("lm_server", "/v1/completions", {"model": "tiny-lm", "prompt": "{}", "max_tokens": 2, "stream": True}),
    ("lm_server", "/v1/chat/completions", {"model": "tiny-lm", "messages": [{"role": "user", "content": "{}"}],
                                           "max_tokens": 2}),
])
def test_a_client_that_gives_up_while_queued_costs_no_model_time(which: str, path: str, body: dict[str, Any],
                                                                  request: pytest.FixtureRequest) -> None:
    """Clients that time out and retry under overload would otherwise have the model run every copy
    they abandoned (the server is told only by the disconnect)."""
    server: ServerThread = request.getfixturevalue(which)
    served = server.live.current
    assert served is not None
    held = HeldTask(served.task)
    server.live.current = dataclasses.replace(served, task=held)

    def fill(text: str) -> dict[str, Any]:
        return json.loads(json.dumps(body).replace("{}", text))

    def queued_becomes(n: int) -> None:
        deadline = time.monotonic() + 10
        while (queued := httpx.get(server.url + "/healthz").json()["queued"]) != n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert queued == n

    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(post, server, path, fill("the first, held in the model"))
            assert held.entered.wait(30)
            payload = json.dumps(fill("abandoned")).encode()
            with socket.create_connection(("127.0.0.1", server.port)) as client:  # queued behind the held pass…
                client.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                queued_becomes(1)
            queued_becomes(0)  # …and gone when its client hangs up
            held.gate.set()
            assert running.result(timeout=60).status_code == 200
        again = post(server, path, fill("after"))
        assert again.status_code == 200, again.text
    finally:
        held.gate.set()
        server.live.current = served
    assert not any("abandoned" in text for text in held.inputs), held.inputs
    assert any("after" in text for text in held.inputs)


# -- language models -----------------------------------------------------------------------------
def test_chat_with_one_message_answers_what_the_evaluated_task_answers(lm_server: ServerThread, home: Settings,
                                                                        language_model: str) -> None:
    store = ArtifactStore(home.resolved_artifacts_dir())
    manifest = read_manifest(store, language_model)
    spec = manifest.requirements.task
    expected = task_of(spec).runtime().predict(load_deployment(store, manifest, "cpu"), spec, ["what is 3 plus one?"])
    r = post(lm_server, "/v1/chat/completions",
             {"model": "tiny-lm", "messages": [{"role": "user", "content": "what is 3 plus one?"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    answer = body["choices"][0]["message"]["content"]
    assert answer.strip().split("\n")[0].strip() == expected[0]
    usage = body["usage"]
    assert usage["completion_tokens"] <= spec.max_new_tokens and usage["prompt_tokens"] > 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] in {"stop", "length"}


def test_completions_continue_each_prompt_and_report_tokens(lm_server: ServerThread) -> None:
    prompts = ["Q: what is 1 plus one?\nA:", "The quick brown fox", "def main():"]
    r = post(lm_server, "/v1/completions", {"model": "tiny-lm", "prompt": prompts, "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    for choice in body["choices"]:
        assert choice["finish_reason"] in {"stop", "length"}
    assert 0 < body["usage"]["completion_tokens"] <= 15
    again = post(lm_server, "/v1/completions", {"model": "tiny-lm", "prompt": prompts[1], "max_tokens": 5}).json()
    assert again["choices"][0]["text"] == body["choices"][1]["text"], "greedy decoding is deterministic"
    first = body["choices"][1]["text"]
    if len(first) > 2:
        stop = first[1:3]
        cut = post(lm_server, "/v1/completions",
                   {"model": "tiny-lm", "prompt": prompts[1], "max_tokens": 5, "stop": [stop]}).json()
        assert cut["choices"][0]["text"] == first[: first.find(stop)]
        assert cut["choices"][0]["finish_reason"] == "stop"


def sse(server: ServerThread, path: str, body: dict[str, object]) -> tuple[list[dict[str, Any]], httpx.Response]:
    """The events of a streamed answer, read as they arrive; the stream must end with [DONE]."""
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.read()
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    for line in lines[:-1]:
        assert line.startswith("data: "), line
        events.append(json.loads(line.removeprefix("data: ")))
    return events, r


@pytest.mark.parametrize("stop", [None, "e", " th"])
def test_streamed_completions_are_the_whole_answer_in_pieces(lm_server: ServerThread, stop: str | None) -> None:
    prompts = ["The quick brown fox", "def main():", "Q: what is 2 plus one?\nA:"]
    body: dict[str, object] = {"model": "tiny-lm", "prompt": prompts, "max_tokens": 12,
                               **({"stop": [stop]} if stop else {})}
    whole = post(lm_server, "/v1/completions", body).json()
    events, _ = sse(lm_server, "/v1/completions", body | {"stream": True, "stream_options": {"include_usage": True}})
    assert all(e["object"] == "text_completion" and e["id"] == events[0]["id"] for e in events)
    texts: list[str] = ["", "", ""]
    finished: list[str | None] = [None, None, None]
    for e in events[:-1]:
        (choice,) = e["choices"]
        i = choice["index"]
        assert finished[i] is None, "no piece after a choice's finish_reason"
        texts[i] += choice["text"]
        finished[i] = choice["finish_reason"]
    assert texts == [c["text"] for c in whole["choices"]]
    assert finished == [c["finish_reason"] for c in whole["choices"]]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]
    assert len(events) > 3 + 3 + 1, "pieces arrive as they are generated, not only at the end"


def test_streamed_chat_opens_with_the_role_and_ends_with_finish_reason(lm_server: ServerThread) -> None:
    body: dict[str, object] = {"model": "tiny-lm", "messages": [{"role": "user", "content": "what is 3 plus one?"}],
                               "max_tokens": 10}
    answered = post(lm_server, "/v1/chat/completions", body)
    whole = answered.json()
    events, _ = sse(lm_server, "/v1/chat/completions", body | {"stream": True})
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(str(d.get("content", "")) for d in deltas) == whole["choices"][0]["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert events[-1]["system_fingerprint"] == answered.headers["x-weightflow-manifest"]  # the manifest that answered
    assert "usage" not in events[-1], "usage comes only with stream_options.include_usage"


def test_sampling_with_a_seed_is_repeatable(lm_server: ServerThread) -> None:
    body = {"model": "tiny-lm", "prompt": "Once upon", "max_tokens": 6, "temperature": 1.0, "seed": 7}
    a = post(lm_server, "/v1/completions", body).json()["choices"][0]["text"]
    b = post(lm_server, "/v1/completions", body).json()["choices"][0]["text"]
    assert a == b


def test_requests_past_the_fitted_context_are_refused_before_any_model_work(lm_server: ServerThread) -> None:
    r = post(lm_server, "/v1/completions", {"model": "tiny-lm", "prompt": "hello", "max_tokens": 4000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "tokens per request" in r.json()["error"]["message"]
    r = post(lm_server, "/v1/completions", {"model": "tiny-lm", "prompt": "word " * 2000, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("body", [
    {"model": "tiny-lm", "messages": []},
    {"model": "tiny-lm", "messages": [{"role": "robot", "content": "hi"}]},
    {"model": "tiny-lm", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
    {"model": "tiny-lm", "messages": [{"role": "user", "content": "hi"}], "stream": True,
     "stream_options": {"include_usage": True, "other": 1}},
    {"model": "tiny-lm", "messages": [{"role": "user", "content": "hi"}], "n": 3},
    {"model": "tiny-lm", "messages": [{"role": "user", "content": "hi"}], "temperature": -1},
    {"model": "tiny-lm", "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1},
    {"model": "tiny-lm", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    {"model": "tiny-lm", "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]},
    {"model": "tiny-lm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
])
def test_bad_chat_requests_are_400(lm_server: ServerThread, body: dict[str, object]) -> None:
    r = post(lm_server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"]


def test_a_conversation_needs_a_chat_template(lm_server: ServerThread) -> None:
    r = post(lm_server, "/v1/chat/completions", {"model": "tiny-lm", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]


def test_a_language_model_does_not_embed_or_classify(lm_server: ServerThread) -> None:
    for path in ("/v1/embeddings", "/v1/classify"):
        r = post(lm_server, path, {"model": "tiny-lm", "input": "hi"})
        assert r.status_code == 404 and "/v1/completions" in r.json()["error"]["message"]


# -- the published schema ------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["encoder_server", "lm_server"])
def test_the_openapi_schema_holds_under_fuzzing(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """schemathesis generates valid and invalid requests from /openapi.json: no 500s, every status code
    and body as documented, invalid data refused. Valid-by-schema data may still be refused: the rules that
    depend on the loaded model (prompt + max_tokens within the fitted context, a conversation needs the
    model's chat template, the last message is the user's) are not JSON Schema; they are 400s tested above."""
    import subprocess
    import sys

    server: ServerThread = request.getfixturevalue(which)
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "run", f"{server.url}/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", "15",
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its reports go to ./.schemathesis
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_a_served_language_model_measured_as_an_api_matches_the_model_in_process(
        lm_server: ServerThread, home: Settings, language_model: str) -> None:
    """`weightflow serve` of a generation deployment as another run's API candidate: over
    /v1/completions (the prompt as the task renders it) the answers are the model's own."""
    import dataclasses

    from weightflow.contracts.requirements import HardwareProfile
    from weightflow.shared.modeling.remote import Endpoint
    from weightflow.shared.modeling.stored import rows

    store = ArtifactStore(home.resolved_artifacts_dir())
    manifest = read_manifest(store, language_model)
    spec, task = manifest.requirements.task, task_of(manifest.requirements.task)
    eval_rows = rows(store, manifest.data.eval, task, "eval")
    hw = HardwareProfile(profile="t", memory_mb=4096, cost_per_hour_usd=0.1)
    local = task.runtime().evaluate(load_deployment(store, manifest, "cpu"), spec, eval_rows, "exact_match", hw)
    endpoint = dataclasses.replace(Endpoint.served(lm_server.url, "tiny-lm"), route="completions")
    remote = task.evaluate_remote(endpoint, spec, eval_rows, "exact_match", hw)
    assert remote.via == "http" and remote.n == local.n == len(eval_rows)
    assert remote.score == local.score and remote.extra["chrf"] == pytest.approx(local.extra["chrf"])
    assert remote.extra["completion_tokens_per_task"] > 0 and remote.extra["http_status/200"] == len(eval_rows)


def test_every_route_is_a_router_function_and_counted_by_its_path(encoder_server: ServerThread) -> None:
    """The routes live in weightflow/serving/routes/ (one router per audience), readable and testable on their
    own; create_app only assembles them. Requests are counted by route: a routed path under its own label."""
    from fastapi.routing import APIRoute

    from weightflow.serving.app import ROUTERS, route_paths

    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    assert route_paths() == {"/healthz", "/readyz", "/v1/models", "/v1/classify", "/v1/embeddings",
                             "/v1/completions", "/v1/chat/completions"}
    for route in routes:
        module, name = route.endpoint.__module__, route.endpoint.__qualname__
        assert module.startswith("weightflow.serving.routes.") and "<locals>" not in name, (route.path, module, name)
    assert post(encoder_server, "/v1/classify", {"model": "ticket-router", "input": TEXTS[:1]}).status_code == 200
    assert httpx.get(encoder_server.url + "/no/such/route", timeout=10).status_code == 404
    assert httpx.get(encoder_server.url + "/openapi.json", timeout=10).status_code == 200
    scraped = httpx.get(encoder_server.url + "/metrics", timeout=10).text
    for label in ('route="/v1/classify",status="200"', 'route="other",status="404"', 'route="/openapi.json"'):
        assert label in scraped, (label, scraped[:2000])
