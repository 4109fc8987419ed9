"""Hostile API candidates (issue 19): answers that drip, bodies that never stop growing, a key echoed back
and cut, a candidate that fails while other calls are in flight. Each against a real loopback HTTP server
that misbehaves on cue; each bound is measured (wall time, bytes, resident memory, requests the server saw)."""

from __future__ import annotations

import base64
import gc
import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from starlette.responses import JSONResponse, PlainTextResponse, Response

from weightflow.shared.modeling.registry import tasks
from weightflow.shared.modeling.remote import (
    MAX_RESPONSE_BYTES,
    Caller,
    EndpointError,
    EndpointRefused,
    EndpointTimedOut,
    EndpointUnreachable,
    MalformedResponse,
    ResponseTooLarge,
    redact,
)

from ..fake_api import FakeApi, Huge, Scripted, chat_answer, drip, dripped
from ..integration.test_api_candidates import GEN_ROWS, GEN_SPEC, HW, fast

KEY = "sk-live-0123456789abcdefGHIJKLMNOPqrstuv"  # 40 characters, as the leaked one was
FRAGMENT = 8


def fragments(secret: str) -> set[str]:
    return {secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}


def leaks(text: str, secret: str = KEY) -> list[str]:
    """Every 8-character piece of the key (plain, url-encoded, or inside a Basic header's base64) in `text`."""
    basic = base64.b64encode(f"user:{secret}".encode()).decode()
    forms = fragments(secret) | fragments(quote(secret, safe="")) | fragments(basic[8:-4])
    return sorted(f for f in forms if f in text)


def evaluate(url: str, rows: int = 1, **over: Any) -> Any:
    endpoint = fast(url, **{"api_key": KEY, **over})
    return tasks.get("generation").evaluate_remote(endpoint, GEN_SPEC, GEN_ROWS[:rows], "exact_match", HW)


@contextmanager
def memory() -> Iterator[list[int]]:
    """[baseline, peak, after] resident bytes of this process, sampled every 2 ms around the block, and the
    bytes Python itself still holds afterwards (tracemalloc, after a collection): the allocator may keep
    freed pages a while, Python must not keep the bodies."""
    me = psutil.Process()
    gc.collect()
    tracemalloc.start()
    out = [me.memory_info().rss, 0, 0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            out[1] = max(out[1], me.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        done.set()
        sampler.join()
        out[2] = me.memory_info().rss
        out[1] = max(out[1], out[2])
        gc.collect()
        out[3] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()


# -- redaction, before anything is cut -----------------------------------------------------------------

def test_redaction_removes_every_fragment_of_the_key_in_every_form() -> None:
    basic = base64.b64encode(f"someone:{KEY}".encode()).decode()
    for text in (f"Bearer {KEY}", KEY[:25], KEY[13:21], f"x{KEY[-9:]}y", quote(KEY, safe=""), f"Basic {basic}",
                 f"{KEY[:12]}...{KEY[20:30]}"):
        assert not leaks(redact(text, KEY)), text
        assert "<api key>" in redact(text, KEY)
    assert redact("nothing to see: sk-live", KEY) == "nothing to see: sk-live"  # 7 characters are not a fragment
    assert redact("pw=hunter2!", "hunter2") == "pw=<api key>!"  # a key shorter than a fragment: whole only
    assert redact(f"a {KEY} b", None) == f"a {KEY} b"


def error_body(filler: int, header: str = f"Bearer {KEY}") -> str:
    """An error of `filler` characters, then the Authorization header the server echoes back."""
    return ("invalid request: " + "the key in your Authorization header is not allowed for this model " * 9)[
        :filler] + f" Authorization: {header}"


CUTS = {"refused": 300, "basic": 300, "failing": 200, "not_json": 200, "no_choices": 200 - len("{'error': '")}


@pytest.mark.parametrize("inside", [16, 25, 38])
@pytest.mark.parametrize("how", list(CUTS))
def test_a_key_echoed_and_cut_anywhere_leaves_no_fragment(how: str, inside: int) -> None:
    """The echoed key straddles each cut the client made before redacting (an error body's first 300 or
    200 characters, a field excerpt's 200), `inside` of its characters before the cut (25 of 40 leaked in
    the issue)."""
    filler = CUTS[how] - len(" Authorization: Bearer ") - inside
    basic = base64.b64encode(f"user:{KEY}".encode()).decode()
    text = error_body(filler, f"Basic {basic}" if how == "basic" else f"Bearer {KEY}")
    status = {"refused": 401, "basic": 403, "failing": 503, "not_json": 200, "no_choices": 200}[how]

    def answer(n: int, body: dict[str, Any]) -> Response:
        return JSONResponse({"error": text}) if how == "no_choices" else PlainTextResponse(text, status_code=status)

    with FakeApi(answer) as upstream, pytest.raises(EndpointError) as info:
        evaluate(upstream.url, max_retries=0)
    assert not leaks(str(info.value)), str(info.value)


# -- a call has a deadline, body included ------------------------------------------------------------

ANSWER = json.dumps({"choices": [{"message": {"content": "4"}}]}).encode()
HEAD_DRIP = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 16  # 40 bytes: 12 s at a byte every 0.3 s


@pytest.mark.parametrize(("name", "server"), [
    ("drips its headers", lambda: Scripted(dripped(HEAD_DRIP, 0.3))),
    ("drips its body", lambda: FakeApi(lambda n, body: drip(ANSWER + b" " * 60, 0.1))),
    ("falls silent", lambda: Scripted([(1.8, b'HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n{"choices"')])),
])
def test_an_answer_that_drips_or_stalls_is_cut_at_the_call_deadline(name: str, server: Any) -> None:
    """timeout_s (2 s) is the whole call: headers and body. httpx times each read alone, so without a deadline
    over the whole try a server holds the call as long as it drips, its head (a byte every 0.3 s: 12 s) or its
    body (a byte every 0.1 s: 10 s); one that sends its head at 1.8 s and then nothing holds it until its
    read times out, at 3.8 s. The bound sits between: a loaded machine is late by a second, not by 1.8 s."""
    with server() as upstream, pytest.raises(EndpointTimedOut) as info:
        start = time.monotonic()
        try:
            evaluate(upstream.url, timeout_s=2.0, max_retries=0)
        finally:
            elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"{name}: the call took {elapsed:.2f} s with timeout_s=2"
    assert "api.timeout_s" in str(info.value) and "m at http://127.0.0.1" in str(info.value)


def test_a_kept_alive_connection_that_drips_its_next_headers_is_cut_at_the_call_deadline() -> None:
    """The second call goes over the first one's pooled connection, which no trace event names: its deadline
    still covers the wait for headers."""
    whole = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
    with Scripted([(0.0, whole), (0.0, None), *dripped(HEAD_DRIP, 0.3)]) as upstream, \
            Caller(fast(upstream.url, timeout_s=2.0, max_retries=0)) as caller:
        assert caller.post("chat/completions", {"model": "m"}).body["choices"]
        start = time.monotonic()
        with pytest.raises(EndpointTimedOut, match=r"api\.timeout_s"):
            caller.post("chat/completions", {"model": "m"})
        elapsed = time.monotonic() - start
    assert upstream.connections == 1, "the second call did not reuse the connection"
    assert elapsed < 3.0, f"the call took {elapsed:.2f} s with timeout_s=2 (the drip lasts 12 s)"


# -- a response has a size cap -----------------------------------------------------------------------

MB = 1 << 20


@pytest.mark.parametrize(("name", "server", "error"), [
    ("50 MB answer", lambda: Huge(50 * MB), ResponseTooLarge),
    ("50 MB declared", lambda: Huge(50 * MB, declare=True), ResponseTooLarge),
    ("50 MB error body", lambda: Huge(50 * MB, status=500), EndpointUnreachable),
    ("gzip bomb", lambda: Huge(50 * MB, gzipped=True), ResponseTooLarge),
])
def test_a_huge_body_is_cut_at_the_cap_and_memory_comes_back(name: str, server: Any,
                                                              error: type[Exception]) -> None:
    huge = server()
    with FakeApi(huge) as upstream, memory() as rss:
        with pytest.raises(error) as info:
            evaluate(upstream.url, rows=4, max_retries=0, max_concurrency=2)
        upstream.stop()  # the MiB chunks the server was still sending are its own, not the client's
    base, peak, after, held = rss
    assert peak - base < 48 * MB, f"{name}: peak {(peak - base) / MB:.0f} MB over the baseline"  # 2 calls x 4 MiB
    assert held < 2 * MB, f"{name}: Python still holds {held / MB:.1f} MB"
    assert after - base < 32 * MB, f"{name}: {(after - base) / MB:.0f} MB still resident"
    assert huge.sent <= 32 * MB, f"{name}: read {huge.sent / MB:.0f} MB of it"  # what socket buffers hold, no more
    if error is ResponseTooLarge:
        assert f"more than {MAX_RESPONSE_BYTES >> 20} MiB" in str(info.value) and "api.route" in str(info.value)
        assert isinstance(info.value, MalformedResponse)  # left out as `malformed`, as before


# -- one failure stops the lot -----------------------------------------------------------------------

def test_with_no_retries_a_failing_candidate_is_called_at_most_max_concurrency_times() -> None:
    def failing(n: int, body: dict[str, Any]) -> Response:
        time.sleep(0.2)  # the first calls are all in flight together
        return JSONResponse({"error": "down"}, status_code=500)

    with FakeApi(failing) as upstream, pytest.raises(EndpointUnreachable, match="on all 1 tries"):
        evaluate(upstream.url, rows=12, max_retries=0, max_concurrency=3)
    assert len(upstream.requests) <= 3, f"the server saw {len(upstream.requests)} requests"


def test_calls_in_flight_are_abandoned_when_one_fails_for_good() -> None:
    release = threading.Event()

    def one_refuses(n: int, body: dict[str, Any]) -> Response:
        if n == 0:
            return JSONResponse({"error": "bad model"}, status_code=404)
        release.wait(10)  # answers in 10 s, or once the test has measured (so the server stops at once)
        return chat_answer("0")

    with FakeApi(one_refuses) as upstream:
        try:
            start = time.monotonic()
            with pytest.raises(EndpointRefused, match="HTTP 404"):
                evaluate(upstream.url, rows=12, max_concurrency=3, timeout_s=20.0)
            elapsed = time.monotonic() - start
        finally:
            release.set()
    assert elapsed < 3.0, f"map waited {elapsed:.2f} s for calls whose candidate had already failed (10 s)"
    assert len(upstream.requests) <= 3


def test_a_candidate_is_bounded_by_its_budget_not_by_what_the_server_asks() -> None:
    """Retry-After: 5 on every call, 2 retries: the server asks for 10 s of waiting; the candidate's budget
    is timeout_s x (max_retries + 1) x ceil(rows / max_concurrency) = 0.5 x 3 x 1 = 1.5 s."""
    storm = lambda n, body: JSONResponse({"error": "later"}, status_code=429, headers={"retry-after": "5"})  # noqa: E731
    with FakeApi(storm) as upstream, Caller(fast(upstream.url, api_key=KEY, timeout_s=0.5, max_retries=2)) as caller:
        start = time.monotonic()
        with pytest.raises(EndpointTimedOut, match=r"budget of 1\.5 s") as info:
            caller.map("chat/completions", [{"model": "m"}, {"model": "m"}, {"model": "m"}])
        elapsed = time.monotonic() - start
    assert elapsed < 4.0, elapsed  # what the server asked for is 10 s
    assert "api.timeout_s" in str(info.value) and not leaks(str(info.value))
