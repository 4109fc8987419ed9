"""The event bus every service runs on: typed handlers over JetStream with inbox/outbox and dead letters.

`service` declares handlers against the topology; `delivery` is the one pipeline every message goes through
(run check, retries, dead letters, the handler); `runtime` binds it to NATS and `inprocess` runs it without NATS
for fast tests; `processing` is the one transaction per event; `dead_letters`, `outbox`, `sweeper`, `lifecycle`
are the promises around it.
"""

from weightflow.shared.bus.errors import OrphanError, PermanentError, UndecodableMessage
from weightflow.shared.bus.service import Commit, Delivery, HandlerContext, HandlerResult, Service

__all__ = [
    "Commit",
    "Delivery",
    "HandlerContext",
    "HandlerResult",
    "OrphanError",
    "PermanentError",
    "Service",
    "UndecodableMessage",
]
