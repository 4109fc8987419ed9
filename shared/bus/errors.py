"""How a handler says retrying cannot help; the bus dead-letters these at once, with the reason."""

from __future__ import annotations


class PermanentError(Exception):
    """Bad input: the event can never be handled. Dead-lettered at once (reason `permanent`)."""

    reason = "permanent"


class OrphanError(PermanentError):
    """The event's history is missing: its run, selection, fit or artifacts are unknown here."""

    reason = "orphan"


class UndecodableMessage(PermanentError):
    """The payload is not a valid event of the subscribed type (too big, too deep, not JSON, invalid)."""

    reason = "invalid"
