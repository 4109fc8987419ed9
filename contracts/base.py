"""The envelope every weightflow event shares, and the registry that maps names to types.

Events are the only API between services. Each carries its identity (`event_id`, sent as
`Nats-Msg-Id` so JetStream drops duplicates), the workflow it belongs to (`run_id`), the event that
caused it (`causation_id`) and a `schema_version` so a service refuses payloads newer than it knows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import from_json

from weightflow.contracts.limits import MAX_EVENT_BYTES, MAX_EVENT_DEPTH

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

    def run_registration(self) -> Contract | None:
        """The run registry's entry this event publishes beside itself: an event that starts a run registers it
        (stream WF_RUNS), so later stages can tell a real run from a forged one. The bus asks this, never which
        event it is; an event type overrides it to register runs."""
        return None

    @classmethod
    def registers_runs(cls) -> bool:
        """Whether events of this type register runs (the publisher needs the run registry's subjects)."""
        return cls.run_registration is not Event.run_registration


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


class PayloadError(ValueError):
    """A payload that is not an acceptable JSON document: too big, too deep, or not JSON at all."""


def json_depth(data: Any) -> int:
    """Nesting depth of decoded JSON, walked iteratively (a recursive walk is what an attacker wants)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node)
    return deepest


def decode_json(raw: bytes | str, *, max_bytes: int = MAX_EVENT_BYTES, max_depth: int = MAX_EVENT_DEPTH) -> Any:
    """Bounded JSON decoding: size is checked before parsing, nesting during (pydantic-core's parser
    refuses ~200 levels without recursing) and after; every failure is a PayloadError."""
    size = len(raw)
    if size > max_bytes:
        raise PayloadError(f"payload is {size} bytes, over the {max_bytes}-byte cap")
    try:
        data = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise PayloadError(f"payload is not JSON: {str(exc)[:200]}") from None
    if json_depth(data) > max_depth:
        raise PayloadError(f"payload nests deeper than {max_depth} levels")
    return data


def parse_event(raw: bytes | str, expected: type[E] | None = None) -> Event:
    """Decode a payload into its contract type. Total: any bad input raises a ValueError (PayloadError,
    UnknownEventError, SchemaVersionError or pydantic's ValidationError) that says what is wrong."""
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise PayloadError("payload is not a JSON object")
    name = data.get("event_type")
    cls: type[Event] | None = expected or EVENT_TYPES.get(str(name))
    if cls is None:
        raise UnknownEventError(f"unknown event_type {str(name)[:80]!r}; known: {sorted(EVENT_TYPES)}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            ctx_error = err.get("ctx", {}).get("error")
            if isinstance(ctx_error, SchemaVersionError):
                raise ctx_error from exc
        raise
