"""The services' own OpenTelemetry spans, read back from `<home>/traces.jsonl` for the orchestration bench.

Every service process appends its finished spans there, one JSON object per line (shared.telemetry:
ConsoleSpanExporter behind a BatchSpanProcessor). Two kinds matter here:

* model spans, which the model layer opens around its own work (`task.load`, `task.evaluate`,
  `quantizer.quantize`, `tuner.train`, `source.tree`, ...: shared.modeling.protocols);
* handler spans, which faststream's telemetry middleware opens per handled message (`<subject> process`,
  kind CONSUMER): from the message's arrival through run lookup, handler, commit, outbox publish and ack.

A message a handler published carries its trace context, so the consumer's `process` span has as parent
the `<subject> create` span the producer opened when it began publishing, whose parent is the producer's
own `process` span; that chain gives each stage-to-stage hop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

MODEL_PREFIXES = ("task.", "quantizer.", "tuner.", "source.")
# BatchSpanProcessor's default schedule (OTEL_BSP_SCHEDULE_DELAY): a span reaches the file this long
# after it ends, at the latest, on an unloaded exporter thread.
EXPORT_DELAY_S = 5.0

Kind = Literal["model", "handler", "create", "publish", "other"]


@dataclass(frozen=True)
class Span:
    name: str
    kind: Kind
    service: str  # "benchmark", from the resource's service.name "weightflow-benchmark"
    instance: str  # one per process (service.instance.id), so replicas stay apart
    trace_id: str
    span_id: str
    parent_id: str | None
    start: float  # wall clock, seconds since the epoch (as time.time())
    end: float
    subject: str | None  # messaging spans: the NATS subject

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _kind(name: str, span_kind: str) -> Kind:
    if name.startswith(MODEL_PREFIXES):
        return "model"
    if name.endswith(" process") and span_kind.endswith("CONSUMER"):
        return "handler"
    if name.endswith(" create"):
        return "create"
    if name.endswith(" publish") and span_kind.endswith("PRODUCER"):
        return "publish"
    return "other"


def parse(doc: dict[str, Any]) -> Span:
    resource = (doc.get("resource") or {}).get("attributes") or {}
    attributes = doc.get("attributes") or {}
    context = doc.get("context") or {}
    name = str(doc["name"])
    subject = attributes.get("messaging.destination.name") or attributes.get("messaging.destination_publish.name")
    return Span(name=name, kind=_kind(name, str(doc.get("kind", ""))),
                service=str(resource.get("service.name", "?")).removeprefix("weightflow-"),
                instance=str(resource.get("service.instance.id", "")), trace_id=str(context.get("trace_id", "")),
                span_id=str(context.get("span_id", "")), parent_id=doc.get("parent_id"),
                start=_epoch(doc["start_time"]), end=_epoch(doc["end_time"]),
                subject=None if subject is None else str(subject))


def read(path: Path) -> list[Span]:
    """Every complete span line in the file (a line cut short by a concurrent write is skipped)."""
    if not path.exists():
        return []
    spans = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            spans.append(parse(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return spans


def wait_exported(path: Path, until: float, *, settle_s: float = 0.5, timeout_s: float = 30.0) -> None:
    """Return once spans that ended by `until` (wall clock) have reached the file: the export delay has
    passed since then, and the file has stopped growing for `settle_s`."""
    deadline = time.monotonic() + timeout_s
    time.sleep(max(0.0, until + EXPORT_DELAY_S + 0.5 - time.time()))
    size = -1
    while time.monotonic() < deadline:
        current = path.stat().st_size if path.exists() else 0
        if current == size:
            return
        size = current
        time.sleep(settle_s)


def within(spans: Iterable[Span], lo: float, hi: float) -> list[Span]:
    """Spans that overlap [lo, hi]."""
    return [s for s in spans if s.end > lo and s.start < hi]


def intervals(spans: Iterable[Span], *kinds: Kind) -> list[tuple[float, float]]:
    return [(s.start, s.end) for s in spans if s.kind in kinds]


@dataclass(frozen=True)
class Hop:
    event_subject: str
    producer: str
    consumer: str
    seconds: float  # producer starts publishing the event -> consumer's handler span starts


def hops(spans: Sequence[Span], lo: float, hi: float) -> list[Hop]:
    """Every event one handler published and another handled whose handling began inside [lo, hi]."""
    by_id = {s.span_id: s for s in spans}
    out = []
    for consumer in spans:
        if consumer.kind != "handler" or not (lo <= consumer.start <= hi) or consumer.parent_id is None:
            continue
        created = by_id.get(consumer.parent_id)
        if created is None or created.kind != "create" or created.parent_id is None:
            continue  # published from outside a handler: the bench's client, a scheduler tick, the relay loop
        producer = by_id.get(created.parent_id)
        if producer is None or producer.kind != "handler":
            continue
        out.append(Hop(consumer.subject or created.subject or "?", producer.service, consumer.service,
                       max(0.0, consumer.start - created.start)))
    return out
