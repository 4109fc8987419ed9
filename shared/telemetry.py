"""OpenTelemetry setup: one tracer provider per process, spans carried across NATS by faststream.

Spans go to `<home>/traces.jsonl` (one JSON span per line) by default, which an operator can read
offline, and to an OTLP collector when WEIGHTFLOW_OTLP_ENDPOINT is set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import IO, Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from shared.settings import Settings


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def setup_tracing(service: str, settings: Settings) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"weightflow-{service}"}))
    if settings.trace_file:
        settings.home.mkdir(parents=True, exist_ok=True)
        out: IO[str] = (settings.home / "traces.jsonl").open("a", buffering=1)
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=out, formatter=_one_line)))
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


F = TypeVar("F", bound=Callable[..., Any])


def traced(name: str) -> Callable[[F], F]:
    """Wrap a function in a span (model work: loading, evaluating, quantizing, training), so an operator
    sees in the trace where a handler's time went, and the bench can split model time from the bus's."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with trace.get_tracer("weightflow.modeling").start_as_current_span(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
