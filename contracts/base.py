"""The envelope every weightflow event shares, and the registry that maps names to types.

Events are the only API between services. Each carries its identity (`event_id`, sent as
`Nats-Msg-Id` so JetStream drops duplicates), the workflow it belongs to (`run_id`), the event that
caused it (`causation_id`) and a `schema_version` so a service refuses payloads newer than it knows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SUBJECT_PREFIX = "wf"

E = TypeVar("E", bound="Event")


def utcnow() -> datetime:
    return datetime.now(UTC)


class SchemaVersionError(ValueError):
    """A payload written by a newer (or unknown) contract version than this service understands."""


class Contract(BaseModel):
    """Base for payload parts: immutable, and unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Contract):
    """Envelope fields; subclasses set STAGE, NAME and (when they change shape) SCHEMA_VERSION."""

    STAGE: ClassVar[str] = ""
    NAME: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1

    event_type: str = ""
    event_id: UUID = Field(default_factory=uuid4)
    run_id: UUID
    causation_id: UUID | None = None
    occurred_at: datetime = Field(default_factory=utcnow)
    schema_version: int = 1

    @model_validator(mode="before")
    @classmethod
    def _envelope(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            data.setdefault("event_type", cls.type_name())
            data.setdefault("schema_version", cls.SCHEMA_VERSION)
            if data["event_type"] != cls.type_name():
                raise ValueError(f"event_type {data['event_type']!r} is not {cls.type_name()!r}")
            version = data["schema_version"]
            if isinstance(version, int) and version > cls.SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{cls.type_name()} schema_version {version} is newer than this service understands "
                    f"({cls.SCHEMA_VERSION}); upgrade the consuming service"
                )
        return data

    @classmethod
    def type_name(cls) -> str:
        return f"{cls.STAGE}.{cls.NAME}"

    @classmethod
    def subject(cls) -> str:
        return f"{SUBJECT_PREFIX}.{cls.STAGE}.{cls.NAME}"

    @classmethod
    def follow(cls: type[E], cause: Event, **fields: Any) -> E:
        """A new event in the same run, caused by `cause`."""
        fields.setdefault("run_id", cause.run_id)
        return cls(causation_id=cause.event_id, **fields)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


EVENT_TYPES: dict[str, type[Event]] = {}


def register(cls: type[E]) -> type[E]:
    """Class decorator: make an event type decodable by name and check its subject is unique."""
    name = cls.type_name()
    if name in EVENT_TYPES:
        raise RuntimeError(f"event type {name} registered twice")
    EVENT_TYPES[name] = cls
    return cls


class UnknownEventError(ValueError):
    """A payload whose event_type no contract defines."""


def parse_event(raw: bytes | str, expected: type[E] | None = None) -> Event:
    """Decode a payload into its contract type; raise ValueError (with what to fix) when it is not one."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")
    name = data.get("event_type")
    cls: type[Event] | None = expected or EVENT_TYPES.get(str(name))
    if cls is None:
        raise UnknownEventError(f"unknown event_type {name!r}; known: {sorted(EVENT_TYPES)}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            ctx_error = err.get("ctx", {}).get("error")
            if isinstance(ctx_error, SchemaVersionError):
                raise ctx_error from exc
        raise
