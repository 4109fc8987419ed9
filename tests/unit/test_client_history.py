"""When a history read may stop: a quiet second ends it only when the consumer has delivered everything."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from weightflow.client import _nothing_pending


class Subscription:
    """What `_nothing_pending` asks of an ordered consumer's subscription: its consumer's info, its buffer."""

    def __init__(self, *, pending: int = 0, buffered: int = 0, fails: bool = False) -> None:
        self.pending, self.pending_msgs, self.fails = pending, buffered, fails

    async def consumer_info(self) -> Any:
        if self.fails:
            raise TimeoutError("the consumer's leader is being elected")
        return SimpleNamespace(num_pending=self.pending)


def test_a_read_ends_only_when_nothing_is_left_to_deliver() -> None:
    assert asyncio.run(_nothing_pending(Subscription())) is True
    assert asyncio.run(_nothing_pending(Subscription(pending=3))) is False, "the stream holds more for us"
    assert asyncio.run(_nothing_pending(Subscription(buffered=1))) is False, "delivered, not yet read"
    assert asyncio.run(_nothing_pending(Subscription(fails=True))) is False, "cannot tell: keep waiting"
