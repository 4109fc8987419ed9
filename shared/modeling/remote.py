"""Calling a model behind an OpenAI-compatible HTTP API: API candidates, and canaries on `weightflow serve`.

One `Endpoint` says where and how (URL, model id, route, concurrency, timeout, retries, token prices);
a `Caller` sends requests over one keep-alive pool, at most `max_concurrency` at a time, and retries
429, 5xx and connection errors with exponential backoff (honouring Retry-After). What it measures is
what a client sees: status codes, latency per request including retries, token usage.

A server is not trusted to end its answers (issue 19: one that drips a byte a second held each call for
as long as it liked; one that sent 50 MB bodies took the benchmark service to 12 GB):
- each try has a deadline, `timeout_s`, for the whole exchange, headers and body included: the body is
  streamed and the deadline checked between reads, and a watchdog, armed before the request is sent, shuts
  the socket under a read that would outlast it (a thread cannot be killed; a socket shut down under it wakes
  it at once);
- each body is counted as it arrives and cut at `MAX_RESPONSE_BYTES` (`ResponseTooLarge`), an error body
  at `ERROR_BODY_BYTES`; compressed bodies are inflated within the same count;
- a batch (`map`: one candidate's evaluation) has a budget, `timeout_s x (max_retries + 1) x
  ceil(requests / max_concurrency)`: what its requests could take if each try ran to its timeout, so
  backoffs a server asks for (Retry-After) cannot stretch it further (`EndpointTimedOut`);
- the first request that fails for good stops the caller: no new try starts, and calls in flight are cut.

Failures are typed so stages can tell them apart: `EndpointUnreachable` (nothing answered; its
`EndpointTimedOut`: no whole answer in time), `EndpointRateLimited` (429 past every retry),
`MalformedResponse` (an answer that is not the API's shape; its `ResponseTooLarge`), `EndpointRefused`
(a 4xx: the request or the key is wrong). The API key is read from the environment when an endpoint is
built and is sent only in the Authorization header: it is never part of a message, an event or a trace
attribute. Whatever a server sends back is redacted (`redact`: the key and every fragment of it) before it
is cut or formatted into an error, because servers echo headers and a cut key is still most of a key.

httpx is used directly (not an OpenAI SDK) because the same client must speak to any compatible server,
measure each attempt and retry on our terms.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import socket
import threading
import time
import weakref
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from weightflow.contracts.requirements import ApiEndpoint

RETRIED_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 30.0
MAX_RESPONSE_BYTES = 4 << 20  # one answer to one eval row: a chat reply or an embedding is kilobytes
ERROR_BODY_BYTES = 4 << 10  # of an error's body, only what its message quotes
FRAGMENT_CHARS = 8  # a piece of the key this long in server text is redacted: shorter ones match by chance
REDACTED = "<api key>"


class EndpointError(RuntimeError):
    """The endpoint did not give a usable answer; `kind` says how."""

    kind = "error"


class EndpointUnreachable(EndpointError):
    kind = "unreachable"


class EndpointTimedOut(EndpointUnreachable):
    """No whole answer within `timeout_s` on any try, or the batch's budget spent."""


class EndpointRateLimited(EndpointError):
    kind = "rate_limited"


class MalformedResponse(EndpointError):
    kind = "malformed"


class ResponseTooLarge(MalformedResponse):
    """A body past MAX_RESPONSE_BYTES: cut there, never held whole."""


class EndpointRefused(EndpointError):
    kind = "refused"


class MissingApiKey(EndpointRefused):
    """The key's environment variable is not set where the call would be made."""


class _Stopped(Exception):
    """This caller already failed for good: a request of the same batch gives up without a word."""


class _Late(Exception):
    """A try ran past its deadline (or the batch's budget)."""


class Redactor:
    """Replaces a secret in text, and every run of FRAGMENT_CHARS or more characters of it (also of its
    url-encoded form and of its base64 at any alignment, as inside a Basic header): a server may echo the
    key back cut anywhere, and 25 characters of a 40-character key are most of it. Redact before cutting
    or formatting, never after."""

    def __init__(self, secret: str | None) -> None:
        self._secret = secret or ""
        forms = [self._secret, quote(self._secret, safe="")]
        raw = self._secret.encode()
        for pad in range(3):  # the key's base64 wherever it sits in "user:key": drop what its neighbours touch
            encoded = base64.b64encode(b"\0" * pad + raw).decode()
            forms.append(encoded[(pad * 8 + 5) // 6:-4])
        n = FRAGMENT_CHARS
        self._grams = frozenset(f[i:i + n] for f in forms for i in range(len(f) - n + 1))

    def __call__(self, text: str) -> str:
        if not self._secret or not text:
            return text
        text = text.replace(self._secret, REDACTED)  # a secret shorter than a fragment is recognisable whole
        spans: list[tuple[int, int]] = []
        for gram in self._grams:
            at = text.find(gram)
            while at >= 0:
                spans.append((at, at + FRAGMENT_CHARS))
                at = text.find(gram, at + 1)
        if not spans:
            return text
        spans.sort()
        out: list[str] = []
        end = 0
        for start, stop in spans:
            if start > end or not out:
                out.append(text[end:start])
                out.append(REDACTED)
            end = max(end, stop)
        return "".join(out) + text[end:]

    def json(self, value: Any) -> Any:
        """Every string of a parsed JSON value (keys too) redacted in place, without recursion (a body may
        nest as deep as the parser allows)."""
        if isinstance(value, str):
            return self(value)
        if not self._secret:
            return value
        stack = [value]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                for i, item in enumerate(node):
                    if isinstance(item, str):
                        node[i] = self(item)
                    elif isinstance(item, list | dict):
                        stack.append(item)
            elif isinstance(node, dict):
                items = list(node.items())
                node.clear()
                for k, item in items:
                    if isinstance(item, str):
                        item = self(item)
                    elif isinstance(item, list | dict):
                        stack.append(item)
                    node[self(k)] = item
        return value


def redact(text: str, secret: str | None) -> str:
    """`text` with `secret` and every fragment of it removed (see Redactor)."""
    return Redactor(secret)(text)


@dataclass(frozen=True)
class Prices:
    per_1k_input: float
    per_1k_output: float

    def of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.per_1k_input + completion_tokens * self.per_1k_output) / 1000.0


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    route: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_concurrency: int = 4
    timeout_s: float = 30.0
    max_retries: int = 4
    prices: Prices | None = None  # None: a self-hosted endpoint, costed by its hardware

    @classmethod
    def of_api(cls, api: ApiEndpoint, env: Mapping[str, str] | None = None) -> Endpoint:
        """The endpoint an API candidate names; MissingApiKey when its key is not in the environment."""
        key = None
        if api.api_key_env:
            key = (os.environ if env is None else env).get(api.api_key_env)
            if not key:
                raise MissingApiKey(f"the API key variable {api.api_key_env} is not set in this service's environment; "
                                 "export it where the benchmark, registry and monitoring services run")
        return cls(api.url, api.model, api.route, key, api.max_concurrency, api.timeout_s, api.max_retries,
                   Prices(api.price_per_1k_input_tokens, api.price_per_1k_output_tokens))

    @classmethod
    def served(cls, base_url: str, deployment: str, *, api_key: str | None = None, timeout_s: float = 30.0,
               max_concurrency: int = 4, max_retries: int = 2) -> Endpoint:
        """A `weightflow serve` of `deployment` (its model id is the deployment name)."""
        url = base_url.rstrip("/")
        return cls(url if url.endswith("/v1") else url + "/v1", deployment, None, api_key, max_concurrency,
                   timeout_s, max_retries, None)

    def describe(self) -> str:
        return f"{self.model} at {self.base_url}"

    def budget_s(self, requests: int) -> float:
        """What `requests` may take in all: every try of every request running to its timeout, in waves of
        `max_concurrency`. Backoffs come out of it, so a server asking to wait again and again cannot
        stretch a candidate past it."""
        return self.timeout_s * (self.max_retries + 1) * math.ceil(max(requests, 1) / self.max_concurrency)


@dataclass
class Call:
    """One answered request: its body, what the client waited (retries included), its token usage."""

    body: dict[str, Any]
    latency_ms: float
    attempts: int
    prompt_tokens: int
    completion_tokens: int


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_MAX_S) if value is not None else None
    except ValueError:
        return None


def _usage(body: dict[str, Any]) -> tuple[int, int]:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        raise MalformedResponse(f"usage {usage!r} does not hold token counts")
    return prompt, completion


def _inflater(encoding: str | None) -> Callable[[bytes, int], bytes]:
    """Decodes a body's Content-Encoding a read at a time, never past `room` bytes of output (a few kB of
    gzip can inflate to gigabytes). We ask for identity; gzip and deflate are still read, within the cap."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        return lambda chunk, room: chunk
    if name not in ("gzip", "x-gzip", "deflate"):
        raise MalformedResponse(f"answered with Content-Encoding {name!r}, which the client does not read "
                                "(it asks for identity)")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by the header

    def inflate(chunk: bytes, room: int) -> bytes:
        try:
            return inflater.decompress(chunk, max(room, 1))  # what does not fit is over the cap anyway
        except zlib.error as exc:
            raise MalformedResponse(f"answered a {name} body that does not inflate: {exc}") from None

    return inflate


@dataclass
class _Answer:
    status: int
    retry_after: float | None
    data: bytes


class _Flight:
    """One try's deadline over whichever socket it ends up on. The timer is armed before the request is sent, and
    the socket attached when the try first writes on one (new or from the pool): a server that drips its headers
    is cut like one that drips its body (httpx times each read alone). A blocked read wakes at once when its
    socket is shut; `landed` (under the lock) keeps a late timer off a connection the pool has since lent to
    another try."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._lock, self.cut, self._landed = threading.Lock(), False, False

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._landed:
                self._sock = sock
                if self.cut:  # expired while it waited for a connection
                    _shut(sock)

    def expire(self) -> None:
        with self._lock:
            if not self._landed:
                self.cut = True
                if self._sock is not None:
                    _shut(self._sock)

    def landed(self) -> None:
        with self._lock:
            self._landed, self._sock = True, None


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):  # closed already, or never connected
        sock.shutdown(socket.SHUT_RDWR)


def _attaching(write: Callable[..., None], sock: socket.socket, flights: threading.local) -> Callable[..., None]:
    """A connection's `write`, attaching its socket to the try running in this thread first (holds no Caller)."""
    def attach_then_write(buffer: bytes, timeout: float | None = None) -> None:
        flight = getattr(flights, "current", None)
        if flight is not None:
            flight.attach(sock)
        write(buffer, timeout)
    return attach_then_write


class Caller:
    """Requests to one endpoint over a keep-alive pool; `statuses` and `retries` count what happened. Once
    a request fails for good the caller is stopped: use a new one for new work."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._redact = Redactor(endpoint.api_key)
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        limits = httpx.Limits(max_connections=endpoint.max_concurrency,
                              max_keepalive_connections=endpoint.max_concurrency)
        self._client = httpx.Client(base_url=endpoint.base_url, headers=headers, timeout=endpoint.timeout_s,
                                    limits=limits, follow_redirects=False)
        self.statuses: Counter[int] = Counter()
        self.retries = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failure: EndpointError | None = None
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # every connection's, to cut on stop
        self._flights = threading.local()  # .current: the try this thread runs, if any

    def __enter__(self) -> Caller:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def _count(self, status: int, retried: bool) -> None:
        with self._lock:
            self.statuses[status] += 1
            self.retries += int(retried)

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: note each new connection's socket (TLS included) so `_fail` can cut it, and
        make the connection's writes attach it to the try that writes. A pooled connection is named by no trace
        event, and every request starts with a write in its own thread."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info["return_value"]
            sock = stream.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                with self._lock:
                    self._sockets.add(sock)
                if self._stop.is_set():
                    _shut(sock)
                stream.write = _attaching(stream.write, sock, self._flights)

    def _fail(self, exc: EndpointError) -> EndpointError:
        """The first failure for good stops the caller: tries not yet sent are not, tries in flight are cut
        (their threads wake with a read error and give up). Its message is redacted whole."""
        text = self._redact(str(exc))
        if text != str(exc):
            exc = type(exc)(text)
        with self._lock:
            first = self._failure is None
            if first:
                self._failure = exc
            sockets = list(self._sockets)
        if first:
            self._stop.set()
            for sock in sockets:
                _shut(sock)
        return exc

    def _text(self, data: bytes, limit: int) -> str:
        """Server text for an error message: decoded, redacted, then cut."""
        return self._redact(data.decode("utf-8", errors="replace"))[:limit]

    def _wait(self, delay: float, deadline: float) -> None:
        """Back off `delay` seconds, no later than the batch's deadline, and no longer once stopped."""
        if self._stop.wait(max(0.0, min(delay, deadline - time.monotonic()))):
            raise _Stopped
        if time.monotonic() >= deadline:
            raise _Late

    def _backoff(self, attempt: int, hint: float | None, deadline: float) -> None:
        delay = hint if hint is not None else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempt)
        self._wait(delay * (1.0 if hint is not None else random.uniform(0.5, 1.0)), deadline)

    def _exchange(self, path: str, payload: dict[str, Any], deadline: float) -> _Answer:
        """One try, whole: connect, send, headers and body, all by `deadline` (monotonic); the body counted as
        it streams and cut at the cap. Raises _Late past the deadline, _Stopped once the caller is stopped,
        httpx's errors as they come, ResponseTooLarge past the cap."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Late
        flight = _Flight()
        timer = threading.Timer(remaining, flight.expire)  # armed before the request: headers are inside it too
        timer.daemon = True
        timer.start()
        self._flights.current = flight
        try:
            with self._client.stream("POST", path.lstrip("/"), json=payload, timeout=remaining,
                                     extensions={"trace": self._trace}) as response:
                try:
                    return self._read(response, deadline)
                finally:
                    flight.landed()  # before the connection goes back to the pool
        except httpx.HTTPError:  # before the headers too: a socket cut on stop fails the wait for them
            if self._stop.is_set():
                raise _Stopped from None
            if flight.cut or time.monotonic() >= deadline:
                raise _Late from None
            raise
        finally:
            self._flights.current = None
            flight.landed()
            timer.cancel()

    def _read(self, response: httpx.Response, deadline: float) -> _Answer:
        status = response.status_code
        limit = MAX_RESPONSE_BYTES if status < 400 else ERROR_BODY_BYTES
        declared = response.headers.get("content-length", "")
        if status < 400 and declared.isdigit() and int(declared) > limit:
            self._count(status, False)
            raise self._too_large(status, f"declared {int(declared)} bytes")
        data = bytearray()
        try:
            inflate = _inflater(response.headers.get("content-encoding"))
            for chunk in response.iter_raw():  # as the network gives it: a drip is seen byte by byte
                if self._stop.is_set():
                    raise _Stopped
                if time.monotonic() >= deadline:
                    raise _Late
                data += inflate(chunk, limit + 1 - len(data))
                if len(data) > limit:
                    if status >= 400:  # an error is quoted, not kept: its first bytes say enough
                        del data[limit:]
                        break
                    raise self._too_large(status, "sent more")
        except BaseException as exc:
            data.clear()  # the traceback keeps this frame (and a cycle through the caller) alive for a while
            if isinstance(exc, EndpointError):
                self._count(status, False)
            raise
        return _Answer(status, _retry_after(response), bytes(data))

    def _too_large(self, status: int, what: str) -> ResponseTooLarge:
        return ResponseTooLarge(f"{self.endpoint.describe()} answered HTTP {status} with a body of more than "
                                f"{MAX_RESPONSE_BYTES >> 20} MiB ({what}) for one request; an answer to one eval "
                                "row is kilobytes: check api.route and api.model")

    def post(self, path: str, payload: dict[str, Any]) -> Call:
        """POST `payload` to `path` (relative to the base URL), retrying what is worth retrying, within one
        request's budget. A server that echoes the key back does not get it, or any piece of it, into our
        messages."""
        try:
            return self._post(path, payload, time.monotonic() + self.endpoint.budget_s(1), 1)
        except _Stopped:
            raise self._failure or EndpointUnreachable(f"{self.endpoint.describe()}: stopped") from None

    def _post(self, path: str, payload: dict[str, Any], budget: float, requests: int) -> Call:
        try:
            return self._tries(path, payload, budget, requests)
        except EndpointError as exc:
            raise self._fail(exc) from None

    def _tries(self, path: str, payload: dict[str, Any], budget: float, requests: int) -> Call:
        ep = self.endpoint
        where = f"{ep.describe()} ({path})"
        start = time.perf_counter()
        last, late = "", False
        for attempt in range(ep.max_retries + 1):
            retry = attempt < ep.max_retries
            if self._stop.is_set():
                raise _Stopped
            try:
                answer = self._exchange(path, payload, min(time.monotonic() + ep.timeout_s, budget))
            except _Late:
                self._count(0, retry)
                last, late = f"no whole answer within api.timeout_s={ep.timeout_s:g} s", True
            except httpx.TransportError as exc:  # timeouts included
                self._count(0, retry)
                late = isinstance(exc, httpx.TimeoutException)
                last = self._text(f"{type(exc).__name__}: {exc}".encode(), 300)
            else:
                self._count(answer.status, retry and answer.status in RETRIED_STATUS)
                if answer.status in RETRIED_STATUS:
                    last, late = f"HTTP {answer.status}: {self._text(answer.data, 200)}", False
                    if not retry:
                        error = EndpointRateLimited if answer.status == 429 else EndpointUnreachable
                        raise error(f"{where} answered {last} on all {attempt + 1} tries; "
                                    + ("lower api.max_concurrency or raise the API's rate limit"
                                       if answer.status == 429 else "the service is failing"))
                    self._pause(attempt, answer.retry_after, budget, where, requests)
                    continue
                return self._call(where, answer, start, attempt + 1)
            if time.monotonic() >= budget:
                raise self._over_budget(where, requests, last)
            if not retry:
                error = EndpointTimedOut if late else EndpointUnreachable
                raise error(f"{where} did not answer after {attempt + 1} tries: {last}"
                            + ("; an answer must arrive whole, body included, within api.timeout_s: raise it "
                               "if the API is slow but sound" if late else ""))
            self._pause(attempt, None, budget, where, requests)
        raise EndpointUnreachable(f"{where}: {last}")  # pragma: no cover - the loop always returns or raises

    def _pause(self, attempt: int, hint: float | None, budget: float, where: str, requests: int) -> None:
        try:
            self._backoff(attempt, hint, budget)
        except _Late:
            raise self._over_budget(where, requests, "backing off") from None

    def _over_budget(self, where: str, requests: int, last: str) -> EndpointTimedOut:
        ep = self.endpoint
        return EndpointTimedOut(
            f"{where} did not answer {requests} request(s) within their budget of {ep.budget_s(requests):g} s "
            f"(api.timeout_s x (api.max_retries + 1) x ceil(requests / api.max_concurrency)), last: {last}; "
            "raise api.timeout_s or api.max_concurrency if the API is slow but sound")

    def _call(self, where: str, answer: _Answer, start: float, attempts: int) -> Call:
        if answer.status >= 400:
            raise EndpointRefused(f"{where} refused the request: HTTP {answer.status}: {self._text(answer.data, 300)}"
                                  "; check api.model, api.route and the key")
        try:
            body = self._redact.json(json.loads(answer.data))
        except (ValueError, RecursionError):
            raise MalformedResponse(f"{where} answered HTTP {answer.status} with a body that is not JSON: "
                                    f"{self._text(answer.data, 200)!r}") from None
        if not isinstance(body, dict):
            raise MalformedResponse(f"{where} answered {type(body).__name__}, not a JSON object")
        prompt, completion = _usage(body)
        return Call(body, (time.perf_counter() - start) * 1000.0, attempts, prompt, completion)

    def map(self, path: str, payloads: Sequence[dict[str, Any]]) -> tuple[list[Call], float]:
        """Every payload answered (in order), `max_concurrency` in flight, within the batch's budget; and the
        wall time in seconds. The first failure after retries stops the lot (nothing new is sent, calls in
        flight are cut) and is raised."""
        start = time.perf_counter()
        budget = time.monotonic() + self.endpoint.budget_s(len(payloads))
        pool = ThreadPoolExecutor(max_workers=self.endpoint.max_concurrency, thread_name_prefix="wf-remote")
        futures = [pool.submit(self._post, path, p, budget, len(payloads)) for p in payloads]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            if self._failure is not None:
                raise self._failure
            calls = [f.result() for f in futures]
        except BaseException as exc:
            if isinstance(exc, EndpointError):
                self._fail(exc)
            else:  # interrupted, or a bug: stop as after a failure
                self._fail(EndpointUnreachable(f"{self.endpoint.describe()}: stopped by {type(exc).__name__}"))
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # in-flight tries were cut: this is quick
            futures.clear()  # their exceptions' tracebacks hold the workers' frames
        return calls, time.perf_counter() - start

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Malformed answers found while reading bodies name this endpoint (and quote nothing of the key)."""
        try:
            yield
        except MalformedResponse as exc:
            text = self._redact(str(exc))
            if self.endpoint.describe() in text and text == str(exc):
                raise
            raise type(exc)(text if self.endpoint.describe() in text else
                            f"{self.endpoint.describe()}: {text}") from None

    def http_extra(self) -> dict[str, float]:
        """What clients saw, for a measurement's extra: retries and every status code's count."""
        out = {"http_retries": float(self.retries)}
        out |= {f"http_status/{code or 'no_answer'}": float(n) for code, n in sorted(self.statuses.items())}
        return out


def field_of(body: dict[str, Any], *path: str | int) -> Any:
    """body[path...] or MalformedResponse naming what is missing (so a broken server is named, not a
    KeyError in a handler)."""
    value: Any = body
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            where = "".join(f"[{s!r}]" for s in path)
            raise MalformedResponse(f"the response has no {where}: {str(body)[:200]}") from None
    return value


def text_of(body: dict[str, Any], *path: str | int) -> str:
    value = field_of(body, *path)
    if not isinstance(value, str):
        raise MalformedResponse(f"expected text at {list(path)}, got {type(value).__name__}")
    return value
