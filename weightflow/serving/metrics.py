"""`weightflow serve`'s Prometheus metrics, after vLLM's `/metrics` and OpenTelemetry's GenAI server metrics.

Requests by route and status and their duration (`gen_ai.server.request.duration`), the queue a pass waits
on, batch sizes, tokens in and out, time to first token (streamed requests: the only ones whose first token
a client sees before the last) and time per output token (a batch's decoding steps are shared, so a pass's
model time over its longest completion). Routes are the app's own paths; anything else is `other`, so a
scanner's URLs never become label values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from weightflow.shared.metrics import PREFIX

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(f"{PREFIX}_serve_requests_total", "HTTP requests answered, by route and status", ["route", "status"])
REQUEST_SECONDS = Histogram(f"{PREFIX}_serve_request_duration_seconds",
                            "Time from a request's arrival to its last byte", ["route"], buckets=_SECONDS)
QUEUED = Gauge(f"{PREFIX}_serve_queued_requests", "Requests waiting for a model pass")
BATCH_SIZE = Histogram(f"{PREFIX}_serve_batch_size", "Inputs per model pass", ["kind"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
MODEL_SECONDS = Histogram(f"{PREFIX}_serve_model_pass_duration_seconds", "Time inside one model pass", ["kind"],
                          buckets=_SECONDS)
TOKENS = Counter(f"{PREFIX}_serve_tokens_total", "Tokens read and generated (gen_ai.client.token.usage)",
                 ["type"])
TTFT = Histogram(f"{PREFIX}_serve_time_to_first_token_seconds",
                 "From a streamed pass's start to its first generated text", buckets=_SECONDS)
TPOT = Histogram(f"{PREFIX}_serve_time_per_output_token_seconds",
                 "A generation pass's model time over its longest completion, in tokens", buckets=_SECONDS)
MODEL_BYTES = Gauge(f"{PREFIX}_serve_model_parameter_bytes", "Bytes of the live model's parameters and buffers")


class RequestMetrics:
    """ASGI middleware: every HTTP request counted by route and status, with its duration."""

    def __init__(self, app: Any, routes: Callable[[], Collection[str]]) -> None:
        self.app, self._routes = app, routes
        self._known: Collection[str] | None = None  # read on the first request: every route exists by then

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            if self._known is None:
                self._known = frozenset(self._routes())
            route = path if path in self._known else "other"
            REQUESTS.labels(route, str(status[0])).inc()
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - start)


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def observe_generation(started: float, first_text: float | None, completions: list[Any]) -> None:
    """Token counts, time to first token and time per output token of one generation pass."""
    took = time.perf_counter() - started
    TOKENS.labels("input").inc(sum(c.prompt_tokens for c in completions))
    TOKENS.labels("output").inc(sum(c.completion_tokens for c in completions))
    longest = max((c.completion_tokens for c in completions), default=0)
    if longest:
        TPOT.observe(took / longest)
    if first_text is not None:
        TTFT.observe(first_text - started)


def parameter_bytes(model: Any) -> int | None:
    """Bytes of a torch module's parameters and buffers; None for anything else (the gauge is left alone)."""
    try:
        return int(sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())))
    except Exception:
        return None
