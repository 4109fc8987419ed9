"""API candidates and HTTP measurement: the contract's rules, the client's failure modes against a real
HTTP server that misbehaves on cue, and a real model behind `weightflow serve` measured as an API."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.responses import JSONResponse, Response

from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.contracts.requirements_doc import RequirementsError, parse_requirements
from weightflow.serving.testing import ServerThread, free_port, register_checkpoint
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.datasets import Example, load_jsonl
from weightflow.shared.modeling.registry import sources, tasks
from weightflow.shared.modeling.remote import (
    Caller,
    Endpoint,
    EndpointRateLimited,
    EndpointRefused,
    EndpointUnreachable,
    MalformedResponse,
    MissingApiKey,
    Prices,
)
from weightflow.shared.modeling.sources.api import read_card
from weightflow.shared.modeling.tasks.generation import GenerationRow
from weightflow.shared.modeling.validation import check_requirements
from weightflow.shared.settings import Settings

from ..conftest import EXAMPLE_DIR
from ..fake_api import FakeApi, chat_answer, not_json, rate_limited

KEY = "sk-test-5f1c0ffee-never-log-me"
HW = HardwareProfile(profile="t", memory_mb=1024, cost_per_hour_usd=0.36)
EXAMPLE = yaml.safe_load((EXAMPLE_DIR / "requirements.yaml").read_text())


def api(**over: Any) -> dict[str, Any]:
    return {"base_url": "https://api.example.com/v1", "model": "hosted-small", "price_per_1k_input_tokens": 0.15,
            "price_per_1k_output_tokens": 0.6, "region": "eu", **over}


def doc(candidates: list[Any] | None, **deployment: Any) -> str:
    data = copy.deepcopy(EXAMPLE)
    data["candidates"] = candidates
    data["deployment"] |= deployment
    data["deployment"] = {k: v for k, v in data["deployment"].items() if v is not None}
    return yaml.safe_dump(data)


def errors_of(text: str) -> str:
    with pytest.raises(RequirementsError) as info:
        parse_requirements(text)
    return "\n".join(info.value.errors)


# -- the contract ------------------------------------------------------------------------------------

def test_an_api_only_deployment_needs_no_hardware_and_names_its_candidates() -> None:
    req = parse_requirements(doc([{"api": api()}, {"api": api(model="Org/Big-Model:2"), "name": "big"}],
                                 mode="api", hardware=None))
    assert [c.key for c in req.candidates or []] == ["api-hosted-small", "big"]
    assert [c.source for c in req.candidates or []] == ["api", "api"]
    assert req.deployment.hardware.profile == "api-client" and req.deployment.hardware.cost_per_hour_usd == 0
    assert check_requirements(req)[1] == []


def test_mixed_lists_need_api_mode_and_local_candidates_need_hardware() -> None:
    mixed = [{"api": api()}, "minilm-l6"]
    assert "set deployment.mode: api" in errors_of(doc(mixed))
    assert "deployment.hardware is missing" in errors_of(doc(mixed, mode="api", hardware=None))
    assert "deployment.hardware is missing" in errors_of(doc(None, mode="api", hardware=None))  # default: built-ins
    req = parse_requirements(doc(mixed, mode="api"))
    assert [c.source for c in req.candidates or []] == ["api", "builtin"]


@pytest.mark.parametrize(("entry", "message"), [
    ({"api": api(region="us")}, "data_residency is 'eu' but its API declares region 'us'"),
    ({"api": api(region=None)}, "declares region None"),
    ({"api": api(base_url="ftp://x/v1")}, "base_url"),
    ({"api": api(base_url="https://a b/v1")}, "base_url"),
    ({"api": api(api_key_env="MY KEY")}, "api_key_env"),
    ({"api": api(price_per_1k_input_tokens=-1)}, "price_per_1k_input_tokens"),
    ({"api": api(max_concurrency=0)}, "max_concurrency"),
    ({"api": api(), "builtin": "minilm-l6"}, "exactly one of path:, hf: or api:"),
    ({"api": {**api(), "api_key": KEY}}, "api_key: unknown field"),  # keys are never written in the document
])
def test_a_bad_api_candidate_says_what_to_fix(entry: dict[str, Any], message: str) -> None:
    assert message in errors_of(doc([entry], mode="api", hardware=None))


def test_the_route_must_be_one_the_task_can_be_measured_over() -> None:
    text = doc([{"api": api(route="completions")}], mode="api", hardware=None)
    errors = check_requirements(parse_requirements(text))[1]
    assert any("api.route" in e and "['embeddings', 'classify', 'chat']" in e for e in errors), errors
    data = yaml.safe_load(doc([{"api": api()}], mode="api", hardware=None))
    data["task"] = {"type": "multiple-choice"}
    data["quality"]["metric"] = "accuracy"
    errors = check_requirements(parse_requirements(yaml.safe_dump(data)))[1]
    assert any("cannot be measured over an HTTP API" in e for e in errors), errors


def test_the_endpoint_card_pins_everything_but_the_key(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    ref = parse_requirements(doc([{"api": api(api_key_env="WF_KEY")}], mode="api", hardware=None)).candidates[0]  # type: ignore[index]
    first = sources.get("api").resolve(ref, None, store)
    again = sources.get("api").resolve(ref, None, store)
    assert first.tree_digest == again.tree_digest  # same endpoint, same bytes
    assert first.tree_digest is not None
    card = read_card(store, first.tree_digest)
    assert card == ref.api and first.size_class == "api" and first.params == 0
    with pytest.raises(MissingApiKey, match="WF_KEY is not set"):
        Endpoint.of_api(card, env={})
    endpoint = Endpoint.of_api(card, env={"WF_KEY": KEY})
    assert endpoint.api_key == KEY and KEY not in repr(endpoint)


# -- the client against a real HTTP server -----------------------------------------------------------

GEN_SPEC = TaskSpec(type="generation", prompt="Q: {input}\nA:", chat_template=True, max_new_tokens=8)
GEN_ROWS = [GenerationRow(id=str(i), input=f"{i}+{i}", target=str(2 * i)) for i in range(12)]


def adder(n: int, body: dict[str, Any]) -> Response:
    question = body["messages"][0]["content"].removeprefix("Q: ").removesuffix("\nA:")
    a, _ = question.split("+")
    wrong = int(a) == 3  # one row in twelve is answered wrong
    return chat_answer(f" {2 * int(a) + wrong}\nand then some", prompt_tokens=9, completion_tokens=3)


def fast(url: str, **over: Any) -> Endpoint:
    return Endpoint(**{"base_url": url, "model": "m", "api_key": KEY, "max_concurrency": 3, "timeout_s": 5,
                       "max_retries": 2, "prices": Prices(0.5, 2.0), **over})


def test_generation_over_http_scores_costs_and_counts_what_clients_see() -> None:
    with FakeApi(adder) as upstream:
        m = tasks.get("generation").evaluate_remote(fast(upstream.url), GEN_SPEC, GEN_ROWS, "exact_match", HW)
    assert m.via == "http" and m.n == 12
    assert m.score == pytest.approx(11 / 12) and m.interval is not None and m.interval.method == "wilson"
    assert m.cost_per_1k_usd == pytest.approx(1000 * (9 * 0.5 + 3 * 2.0) / 1000)  # usage x prices, per task
    assert m.extra["http_status/200"] == 12 and m.extra["http_retries"] == 0
    assert m.extra["prompt_tokens_per_task"] == 9 and m.latency_ms_p95 >= m.latency_ms_p50 > 0
    assert m.sample_rows is not None and [s.score for s in m.sample_rows].count(0.0) == 1
    assert all(s.latency_ms is not None for s in m.sample_rows), "every row over HTTP is a timed request"
    path, body, headers = upstream.requests[0]
    assert path == "/v1/chat/completions" and headers["authorization"] == f"Bearer {KEY}"
    assert body["temperature"] == 0 and body["max_tokens"] == 8 and body["model"] == "m"


def test_completions_route_sends_the_raw_prompt() -> None:
    def completion(n: int, body: dict[str, Any]) -> Response:
        return JSONResponse({"choices": [{"index": 0, "text": " 4", "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})

    spec = GEN_SPEC.model_copy(update={"chat_template": False})
    with FakeApi(completion) as upstream:
        m = tasks.get("generation").evaluate_remote(fast(upstream.url), spec, GEN_ROWS[2:3], "exact_match", HW)
    assert m.score == 1.0 and upstream.requests[0][0] == "/v1/completions"
    assert upstream.requests[0][1]["prompt"] == "Q: 2+2\nA:"


def test_a_429_storm_is_retried_with_backoff_then_reported_as_rate_limited() -> None:
    with FakeApi(lambda n, body: rate_limited()) as upstream, Caller(fast(upstream.url)) as caller:
        with pytest.raises(EndpointRateLimited, match=r"on all 3 tries; lower api\.max_concurrency") as info:
            caller.post("chat/completions", {"model": "m"})
        assert len(upstream.requests) == 3 and caller.statuses[429] == 3 and caller.retries == 2
    assert KEY not in str(info.value)


def test_transient_429_and_5xx_are_absorbed_and_counted() -> None:
    script = {0: rate_limited("0.05"), 1: JSONResponse({"error": "boom"}, status_code=503)}

    def flaky(n: int, body: dict[str, Any]) -> Response:
        return script.get(n) or chat_answer("ok")

    with FakeApi(flaky) as upstream, Caller(fast(upstream.url)) as caller:
        call = caller.post("chat/completions", {"model": "m"})
    assert call.attempts == 3 and call.body["choices"][0]["message"]["content"] == "ok"
    assert caller.statuses == {429: 1, 503: 1, 200: 1} and caller.http_extra()["http_retries"] == 2


@pytest.mark.parametrize(("behaviour", "error", "message"), [
    (lambda n, b: not_json(), MalformedResponse, "not JSON"),
    (lambda n, b: JSONResponse(["a", "list"]), MalformedResponse, "not a JSON object"),
    (lambda n, b: JSONResponse({"choices": []}), MalformedResponse, r"no \['choices'\]\[0\]"),
    (lambda n, b: JSONResponse({"choices": [{"message": {"content": 42}}]}), MalformedResponse, "expected text"),
    (lambda n, b: JSONResponse({"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": "x"}}),
     MalformedResponse, "does not hold token counts"),
    (lambda n, b: JSONResponse({"error": "bad key"}, status_code=401), EndpointRefused, "HTTP 401"),
    (lambda n, b: JSONResponse({"error": "down"}, status_code=500), EndpointUnreachable, "the service is failing"),
])
def test_a_malformed_or_refusing_endpoint_is_named_not_crashed_on(behaviour: Any, error: type[Exception],
                                                                   message: str) -> None:
    with FakeApi(behaviour) as upstream, pytest.raises(error, match=message) as info:
        tasks.get("generation").evaluate_remote(fast(upstream.url), GEN_SPEC, GEN_ROWS[:2], "exact_match", HW)
    assert KEY not in str(info.value) and "m at http://127.0.0.1" in str(info.value)


def test_a_server_echoing_the_key_does_not_get_it_into_the_error() -> None:
    def echo(n: int, body: dict[str, Any]) -> Response:
        return JSONResponse({"error": f"key {KEY} is not allowed here"}, status_code=403)

    with FakeApi(echo) as upstream, pytest.raises(EndpointRefused, match="key <api key> is not allowed") as info:
        tasks.get("generation").evaluate_remote(fast(upstream.url), GEN_SPEC, GEN_ROWS[:1], "exact_match", HW)
    assert KEY not in str(info.value)


def test_an_unreachable_endpoint_is_retried_then_reported() -> None:
    endpoint = fast(f"http://127.0.0.1:{free_port()}/v1", timeout_s=1)
    with pytest.raises(EndpointUnreachable, match="did not answer after 3 tries"):
        tasks.get("generation").evaluate_remote(endpoint, GEN_SPEC, GEN_ROWS[:1], "exact_match", HW)


def test_concurrency_is_bounded_by_the_endpoint() -> None:
    import threading
    import time

    active, peak, lock = [0], [0], threading.Lock()

    def slow(n: int, body: dict[str, Any]) -> Response:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return chat_answer("0")

    with FakeApi(slow) as upstream:
        tasks.get("generation").evaluate_remote(fast(upstream.url, max_concurrency=2), GEN_SPEC, GEN_ROWS,
                                                "exact_match", HW)
    assert len(upstream.requests) == 12 and peak[0] == 2


# -- a real model behind real HTTP -------------------------------------------------------------------

@pytest.mark.slow
def test_weightflow_serve_measured_as_an_api_matches_the_model_in_process(tmp_path: Path) -> None:
    """The zero-shot rule over /v1/embeddings (as any embeddings API is called) and the server's own
    /v1/classify give the labels the model gives in-process."""
    from weightflow.shared.modeling.stored import load_deployment, read_manifest

    settings = Settings(home=tmp_path / "home", trace_file=False)
    store = ArtifactStore(settings.resolved_artifacts_dir())
    manifest_id = register_checkpoint(store, EXAMPLE_DIR / "requirements.yaml", candidate=1)
    manifest = read_manifest(store, manifest_id)
    spec, task = manifest.requirements.task, tasks.get("zero-shot-classification")
    rows = load_jsonl(EXAMPLE_DIR / "eval.jsonl", Example)[:40]
    local = task.runtime().evaluate(load_deployment(store, manifest), spec, rows, "accuracy", HW)
    with ServerThread(settings, "ticket-router", manifest_id, api_key=KEY) as server:
        for route in ("embeddings", "classify"):
            endpoint = dataclasses.replace(Endpoint.served(server.url, "ticket-router", api_key=KEY), route=route)
            remote = task.evaluate_remote(endpoint, spec, rows, "accuracy", HW)
            assert remote.score == pytest.approx(local.score), route
            assert remote.extra["http_status/200"] == len(rows) + (route == "embeddings")
        wrong_key = Endpoint.served(server.url, "ticket-router", api_key="nope")
        with pytest.raises(EndpointRefused, match="HTTP 401"):
            task.evaluate_remote(wrong_key, spec, rows[:1], "accuracy", HW)


# -- classification asked of a chat model ------------------------------------------------------------

LABELS = {"billing": "an invoice, a charge or a refund", "technical": "a bug or a crash",
          "shipping": "a parcel or a delivery"}


@pytest.mark.parametrize(("answer", "label"), [
    ("billing", "billing"), ("  Billing.\n", "billing"), ('"technical"', "technical"), ("**shipping**", "shipping"),
    ("The label is technical, not billing.", "technical"), ("I think: shipping", "shipping"),
    ("non-billing question", None), ("no idea", None), ("", None),
])
def test_a_chat_answer_is_read_as_the_label_it_names(answer: str, label: str | None) -> None:
    from weightflow.shared.modeling.tasks.classification import label_in

    assert label_in(answer, list(LABELS)) == label


def test_classification_over_chat_asks_with_the_labels_and_scores_what_it_answers() -> None:
    spec = TaskSpec(type="zero-shot-classification", labels=LABELS, max_new_tokens=5)
    rows = [Example(id=str(i), text=t, label=lab) for i, (t, lab) in enumerate([
        ("I was charged twice", "billing"), ("the app crashes", "technical"), ("where is my parcel", "shipping"),
        ("refund please", "billing")])]
    replies = {"I was charged twice": "Billing", "the app crashes": "technical.", "where is my parcel": "hmm",
               "refund please": "shipping"}

    def model(n: int, body: dict[str, Any]) -> Response:
        content = body["messages"][0]["content"]
        assert "- billing: an invoice, a charge or a refund" in content and "Answer with the label name" in content
        return chat_answer(replies[content.rsplit("Text: ", 1)[1]], prompt_tokens=40, completion_tokens=2)

    with FakeApi(model) as upstream:
        m = tasks.get("zero-shot-classification").evaluate_remote(fast(upstream.url, route="chat"), spec, rows,
                                                                  "accuracy", HW)
    assert m.score == 0.5 and m.extra["unparsed_answers"] == 1 and m.via == "http"
    assert m.sample_rows is not None and [s.prediction for s in m.sample_rows] == [
        "billing", "technical", "hmm", "shipping"], "an answer naming no label is kept as it was said"
    assert [s.score for s in m.sample_rows] == [1.0, 1.0, 0.0, 0.0]
    assert m.extra["recall/billing"] == 0.5 and m.cost_per_1k_usd == pytest.approx(40 * 0.5 + 2 * 2.0)
    assert upstream.requests[0][0] == "/v1/chat/completions" and upstream.requests[0][1]["max_tokens"] == 5
    custom = spec.model_copy(update={"prompt": "Pick one of {labels} for: {input}"})
    with FakeApi(lambda n, body: chat_answer("billing")) as upstream:
        tasks.get("zero-shot-classification").evaluate_remote(fast(upstream.url, route="chat"), custom, rows[:1],
                                                              "accuracy", HW)
    assert upstream.requests[0][1]["messages"][0]["content"].startswith("Pick one of - billing:")
