"""Calling a model behind an OpenAI-compatible HTTP API: API candidates, and canaries on `weightflow serve`.

One `Endpoint` says where and how (URL, model id, route, concurrency, timeout, retries, token prices);
a `Caller` sends requests over one keep-alive pool, at most `max_concurrency` at a time, and retries
429, 5xx and connection errors with exponential backoff (honouring Retry-After). What it measures is
what a client sees: status codes, latency per request including retries, token usage.

Failures are typed so stages can tell them apart: `EndpointUnreachable` (nothing answered),
`EndpointRateLimited` (429 past every retry), `MalformedResponse` (an answer that is not the API's
shape), `EndpointRefused` (a 4xx: the request or the key is wrong). The API key is read from the
environment when an endpoint is built and is sent only in the Authorization header: it is never part
of a message, an event or a trace attribute.

httpx is used directly (not an OpenAI SDK) because the same client must speak to any compatible server,
measure each attempt and retry on our terms.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from contracts.requirements import ApiEndpoint

RETRIED_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 30.0


class EndpointError(RuntimeError):
    """The endpoint did not give a usable answer; `kind` says how."""

    kind = "error"


class EndpointUnreachable(EndpointError):
    kind = "unreachable"


class EndpointRateLimited(EndpointError):
    kind = "rate_limited"


class MalformedResponse(EndpointError):
    kind = "malformed"


class EndpointRefused(EndpointError):
    kind = "refused"


class MissingApiKey(EndpointRefused):
    """The key's environment variable is not set where the call would be made."""


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


class Caller:
    """Requests to one endpoint over a keep-alive pool; `statuses` and `retries` count what happened."""

    def __init__(self, endpoint: Endpoint, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.endpoint = endpoint
        self._sleep = sleep
        headers = {"content-type": "application/json"}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        limits = httpx.Limits(max_connections=endpoint.max_concurrency,
                              max_keepalive_connections=endpoint.max_concurrency)
        self._client = httpx.Client(base_url=endpoint.base_url, headers=headers, timeout=endpoint.timeout_s,
                                    limits=limits, follow_redirects=False)
        self.statuses: Counter[int] = Counter()
        self.retries = 0
        self._lock = threading.Lock()

    def __enter__(self) -> Caller:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def _count(self, status: int, retried: bool) -> None:
        with self._lock:
            self.statuses[status] += 1
            self.retries += int(retried)

    def _backoff(self, attempt: int, hint: float | None) -> None:
        delay = hint if hint is not None else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempt)
        self._sleep(delay * (1.0 if hint is not None else random.uniform(0.5, 1.0)))

    def post(self, path: str, payload: dict[str, Any]) -> Call:
        """POST `payload` to `path` (relative to the base URL), retrying what is worth retrying. A server
        that echoes the key back in an error body does not get it into our messages."""
        try:
            return self._post(path, payload)
        except EndpointError as exc:
            key = self.endpoint.api_key
            if key and key in str(exc):
                raise type(exc)(str(exc).replace(key, "<api key>")) from None
            raise

    def _post(self, path: str, payload: dict[str, Any]) -> Call:
        where = f"{self.endpoint.describe()} ({path})"
        start = time.perf_counter()
        last = ""
        for attempt in range(self.endpoint.max_retries + 1):
            retry = attempt < self.endpoint.max_retries
            try:
                response = self._client.post(path.lstrip("/"), json=payload)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                self._count(0, retry)
                last = f"{type(exc).__name__}: {exc}"[:300]
                if not retry:
                    raise EndpointUnreachable(f"{where} did not answer after {attempt + 1} tries: {last}") from None
                self._backoff(attempt, None)
                continue
            self._count(response.status_code, retry and response.status_code in RETRIED_STATUS)
            if response.status_code in RETRIED_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if not retry:
                    error = EndpointRateLimited if response.status_code == 429 else EndpointUnreachable
                    raise error(f"{where} answered {last} on all {attempt + 1} tries; "
                                + ("lower api.max_concurrency or raise the API's rate limit"
                                   if response.status_code == 429 else "the service is failing"))
                self._backoff(attempt, _retry_after(response))
                continue
            if response.status_code >= 400:
                raise EndpointRefused(f"{where} refused the request: HTTP {response.status_code}: "
                                      f"{response.text[:300]}; check api.model, api.route and the key")
            try:
                body = response.json()
            except ValueError:
                raise MalformedResponse(f"{where} answered HTTP {response.status_code} with a body that is not "
                                        f"JSON: {response.text[:200]!r}") from None
            if not isinstance(body, dict):
                raise MalformedResponse(f"{where} answered {type(body).__name__}, not a JSON object")
            prompt, completion = _usage(body)
            return Call(body, (time.perf_counter() - start) * 1000.0, attempt + 1, prompt, completion)
        raise EndpointUnreachable(f"{where}: {last}")  # pragma: no cover - the loop always returns or raises

    def map(self, path: str, payloads: Sequence[dict[str, Any]]) -> tuple[list[Call], float]:
        """Every payload answered (in order), `max_concurrency` in flight; and the wall time in seconds.
        The first failure after retries stops the lot and is raised."""
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.endpoint.max_concurrency, thread_name_prefix="wf-remote") as pool:
            futures = [pool.submit(self.post, path, p) for p in payloads]
            try:
                calls = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return calls, time.perf_counter() - start

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Malformed answers found while reading bodies name this endpoint."""
        try:
            yield
        except MalformedResponse as exc:
            if self.endpoint.describe() in str(exc):
                raise
            raise MalformedResponse(f"{self.endpoint.describe()}: {exc}") from None

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
