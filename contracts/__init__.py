"""Versioned event contracts: the only API between weightflow services (see docs/contracts.md)."""

from weightflow.contracts import benchmark, fitting, monitoring, registry, requirements, tuning, workflow
from weightflow.contracts.base import (
    EVENT_TYPES,
    Event,
    PayloadError,
    SchemaVersionError,
    UnknownEventError,
    parse_event,
)

__all__ = [
    "EVENT_TYPES",
    "Event",
    "PayloadError",
    "SchemaVersionError",
    "UnknownEventError",
    "benchmark",
    "fitting",
    "monitoring",
    "parse_event",
    "registry",
    "requirements",
    "tuning",
    "workflow",
]
