"""OpenTelemetry setup: one tracer provider per process, spans carried across NATS by faststream.

Spans go to `<home>/traces.jsonl` (one JSON span per line) by default, which an operator can read
offline, and over OTLP to a collector when one is configured: `WEIGHTFLOW_OTLP_ENDPOINT` (first; a base URL
like `OTEL_EXPORTER_OTLP_ENDPOINT`: over HTTP `/v1/traces` is added unless it already ends so), or
OpenTelemetry's own `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` with
`OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` (`http/protobuf`, the default, or `grpc`) and the other standard
`OTEL_EXPORTER_OTLP_*` variables (headers, timeout, certificates), which the exporters read themselves.

A collector that is down or slow never slows a service: finished spans wait in a bounded queue
(`OTEL_BSP_MAX_QUEUE_SIZE`, 2048) that a background thread drains; what does not fit, or fails to export,
is dropped and counted (`weightflow_spans_dropped_total`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult

from weightflow.shared.genai import describe
from weightflow.shared.metrics import SPANS_DROPPED, SPANS_EXPORTED
from weightflow.shared.settings import Settings

PROTOCOLS = ("http/protobuf", "grpc")


class TelemetryConfigError(ValueError):
    """An OTLP setting that cannot work; the message says which variable to fix."""


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


class CountedExporter(SpanExporter):
    """Counts what reached the collector and what was lost on the way (an export that failed)."""

    def __init__(self, inner: SpanExporter, sink: str) -> None:
        self.inner = inner
        self.sink = sink

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            SPANS_EXPORTED.labels(self.sink).inc(len(spans))
        else:
            SPANS_DROPPED.labels(self.sink, "export_failed").inc(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class CountedBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's bounded batch processor, counting the spans its full queue drops (it only logs them)."""

    def __init__(self, exporter: SpanExporter, sink: str) -> None:
        super().__init__(CountedExporter(exporter, sink))
        self.sink = sink

    def on_end(self, span: ReadableSpan) -> None:
        batch = getattr(self, "_batch_processor", None)
        queue, limit = getattr(batch, "_queue", None), getattr(batch, "_max_queue_size", None)
        if queue is not None and limit is not None and len(queue) >= limit:
            SPANS_DROPPED.labels(self.sink, "queue_full").inc()
        super().on_end(span)


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[n].strip() for n in names if env.get(n, "").strip()), None)


def otlp_exporter(settings: Settings, env: Mapping[str, str] | None = None) -> SpanExporter | None:
    """The OTLP span exporter the settings and OpenTelemetry's variables ask for; None when none is set."""
    env = os.environ if env is None else env
    traces_url = _first(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")  # the full URL, used as given
    base_url = settings.otlp_endpoint or _first(env, "OTEL_EXPORTER_OTLP_ENDPOINT")  # a base, as OTel defines it
    if not traces_url and not base_url:
        return None
    protocol = _first(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol not in PROTOCOLS:
        raise TelemetryConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use one of "
                                   f"{', '.join(PROTOCOLS)}")
    # Headers, timeout, compression and certificates: the exporters read their OTEL_* variables themselves.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=settings.otlp_endpoint or traces_url or base_url)  # ours first, as for HTTP
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    if traces_url and not settings.otlp_endpoint:
        return HttpExporter(endpoint=traces_url)
    url = str(base_url).rstrip("/")
    return HttpExporter(endpoint=url if url.endswith("/v1/traces") else url + "/v1/traces")


def setup_tracing(service: str, settings: Settings) -> TracerProvider:
    exporter = otlp_exporter(settings)  # first: a wrong setting fails before anything is opened
    provider = TracerProvider(resource=Resource.create({"service.name": f"weightflow-{service}"}))
    if settings.trace_file:
        settings.home.mkdir(parents=True, exist_ok=True)
        out: IO[str] = (settings.home / "traces.jsonl").open("a", buffering=1)
        provider.add_span_processor(CountedBatchSpanProcessor(ConsoleSpanExporter(out=out, formatter=_one_line),
                                                              "file"))
    if exporter is not None:
        provider.add_span_processor(CountedBatchSpanProcessor(exporter, "otlp"))
    trace.set_tracer_provider(provider)
    return provider


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to store beside work that another task finishes later."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def continued_trace(traceparent: str | None) -> Iterator[None]:
    """Run the block as part of the trace `traceparent` names (nothing changes when it is None)."""
    if not traceparent:
        yield
        return
    token = otel_context.attach(propagate.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        otel_context.detach(token)


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
            with trace.get_tracer("weightflow.modeling").start_as_current_span(name) as span:
                result = fn(*args, **kwargs)
                describe(span, name, args, result)  # GenAI conventions: model, usage, evaluation results
                return result

        return wrapper  # type: ignore[return-value]

    return decorate
