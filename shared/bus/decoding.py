"""Bounded, total decoding for subscribers: size and nesting are checked before any parsing.

faststream decodes every message before the handler runs (even one that only takes the raw message),
with an unbounded `json.loads`; a payload nested 200k deep then raises RecursionError inside the
framework on every delivery. This decoder replaces faststream's: any bad input becomes one
`UndecodableMessage`, which the dead-letter middleware turns into a dead letter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weightflow.contracts.base import Event, parse_event
from weightflow.shared.bus.errors import UndecodableMessage


def bounded_decoder(event_type: type[Event]) -> Callable[[Any], Event]:
    def decode(msg: Any) -> Event:  # one parameter: faststream uses it instead of its default decoder
        try:
            return parse_event(msg.body, event_type)
        except ValueError as exc:
            raise UndecodableMessage(f"invalid {event_type.type_name()} payload: {str(exc)[:1500]}") from None

    return decode


def envelope(raw: bytes) -> tuple[str | None, str | None]:
    """(event_id, run_id) of a payload if it has them, for dead letters of undecodable events; never raises."""
    from weightflow.contracts.base import decode_json

    try:
        data = decode_json(raw)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    event_id, run_id = data.get("event_id"), data.get("run_id")
    return (str(event_id)[:64] if isinstance(event_id, str) else None,
            str(run_id)[:64] if isinstance(run_id, str) else None)
