"""OTLP export as an operator configures it: our setting or OpenTelemetry's own variables, HTTP or gRPC, to a
real receiver that decodes the wire format; and a collector that is slow or down never holds a service up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from weightflow.shared.settings import Settings
from weightflow.shared.telemetry import CountedBatchSpanProcessor, TelemetryConfigError, otlp_exporter

from ..otlp_receiver import grpc_receiver, http_receiver


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def provider_to(env: dict[str, str], settings: Settings,
                monkeypatch: pytest.MonkeyPatch) -> tuple[TracerProvider, CountedBatchSpanProcessor]:
    for name, value in env.items():  # the exporters read their own variables from the environment
        monkeypatch.setenv(name, value)
    exporter = otlp_exporter(settings)
    assert exporter is not None
    processor = CountedBatchSpanProcessor(exporter, "otlp")
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider, processor


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(home=tmp_path, trace_file=False)


def test_no_endpoint_no_exporter_and_a_wrong_protocol_says_which_variable(settings: Settings) -> None:
    assert otlp_exporter(settings, {}) is None
    with pytest.raises(TelemetryConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL='http/json'.*grpc"):
        otlp_exporter(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                                 "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


@pytest.mark.parametrize("how", ["weightflow-setting", "otel-http", "otel-grpc"])
def test_spans_reach_a_real_receiver(settings: Settings, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = grpc_receiver if how == "otel-grpc" else http_receiver
    with receiver() as (url, spans):
        if how == "weightflow-setting":
            env: dict[str, str] = {}
            settings = settings.model_copy(update={"otlp_endpoint": url})
        else:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": url,
                   "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if how == "otel-grpc" else "http/protobuf"}
        provider, _ = provider_to(env, settings, monkeypatch)
        exported = counter("weightflow_spans_exported_total", sink="otlp")
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("parent") as parent, tracer.start_as_current_span("child"):
            pass
        assert provider.force_flush(10_000)
        got = {s.name: s for s in spans.snapshot()}
        assert set(got) == {"parent", "child"}
        assert got["child"].parent_id == got["parent"].span_id == format(parent.get_span_context().span_id, "016x")
        assert counter("weightflow_spans_exported_total", sink="otlp") == exported + 2
        provider.shutdown()


def test_a_slow_collector_never_slows_the_service_and_drops_are_counted(settings: Settings,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
    with http_receiver() as (url, spans):
        spans.delay_s = 3.0  # each export waits 3 s for its answer
        provider, _ = provider_to({"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_EXPORTER_OTLP_TIMEOUT": "10"}, settings,
                                  monkeypatch)
        dropped = counter("weightflow_spans_dropped_total", sink="otlp", reason="queue_full")
        tracer = provider.get_tracer("test")
        start = time.perf_counter()
        for i in range(2000):
            with tracer.start_as_current_span(f"work-{i}"):
                pass
        took = time.perf_counter() - start
        # 2,000 spans ended while one export was still waiting: far quicker than even one answer
        assert took < spans.delay_s, took
        assert counter("weightflow_spans_dropped_total", sink="otlp", reason="queue_full") - dropped >= 2000 - 64 - 16
        spans.delay_s = 0.0
        provider.shutdown()


def test_a_collector_that_is_down_breaks_nothing_and_the_loss_is_counted(settings: Settings,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with http_receiver() as (url, _):
        pass  # the port is closed now: nothing listens
    provider, _ = provider_to({"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}, settings,
                              monkeypatch)
    failed = counter("weightflow_spans_dropped_total", sink="otlp", reason="export_failed")
    with provider.get_tracer("test").start_as_current_span("lost"):
        pass
    provider.force_flush(5_000)
    deadline = time.monotonic() + 15
    while counter("weightflow_spans_dropped_total", sink="otlp", reason="export_failed") == failed:
        assert time.monotonic() < deadline, "the failed export was not counted"
        time.sleep(0.1)
    provider.shutdown()
