"""Noticing a consumer that stopped pulling while JetStream holds work for it.

A healthy pull loop asks for the next message every second. So when this process holds nothing of a consumer's
and JetStream still has work for it — messages never delivered, or ones waiting to be delivered again (a NAK
with a delay, an ack wait that ran out) while no pull request at all is waiting — and that lasts (`STALL_S`)
with nothing reaching the handler, the client side has stopped asking: a fetch loop that did not survive a
broker restart, a subscription lost in a reconnect. The runtime then binds that consumer again in place (the
durable consumer and its position are the server's, so nothing is lost or repeated) and says so. A replica busy
with the consumer's only message holds it (ack pending) but sends no pull request meanwhile; another replica's
live loop keeps one waiting, so it is never taken for stalled.

Pure bookkeeping: the runtime feeds it what `consumer_info` says, what it holds, and when deliveries arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Long enough that a handler's retry delay or a slow reconnect never looks like a stall; short next to a run.
STALL_S = 30.0


@dataclass
class StallWatch:
    stall_s: float = STALL_S
    clock: Callable[[], float] = time.monotonic
    _idle_since: dict[str, float] = field(default_factory=dict)  # consumer -> first look at pending work idle
    _delivered: dict[str, float] = field(default_factory=dict)  # consumer -> last delivery to its handler

    def delivered(self, consumer: str) -> None:
        self._delivered[consumer] = self.clock()

    def observe(self, consumer: str, *, pending: int, ack_pending: int, waiting: int, in_hand: int) -> bool:
        """True when `consumer` has had work waiting for it (`pending` never delivered, or `ack_pending` to be
        delivered again with no pull request `waiting`), nothing of it in this process's hands (`in_hand`) and no
        delivery, for `stall_s`: bind it again. The watch starts over after a True."""
        now = self.clock()
        work_waits = pending > 0 or (ack_pending > 0 and waiting == 0)
        if not work_waits or in_hand > 0:
            self._idle_since.pop(consumer, None)
            return False
        since = self._idle_since.setdefault(consumer, now)
        if self._delivered.get(consumer, float("-inf")) >= since:  # work arrived since: a moment's idleness
            self._idle_since[consumer] = now
            return False
        if now - since < self.stall_s:
            return False
        self._idle_since.pop(consumer, None)
        return True
