"""A consumer holding work that nobody pulls is noticed; a busy or briefly idle one never is."""

from __future__ import annotations

from weightflow.shared.bus.stalls import StallWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def look(watch: StallWatch, consumer: str, *, pending: int = 0, ack_pending: int = 0, waiting: int = 0,
         in_hand: int = 0) -> bool:
    return watch.observe(consumer, pending=pending, ack_pending=ack_pending, waiting=waiting, in_hand=in_hand)


def test_work_waiting_with_nothing_in_hand_for_the_stall_time_is_a_stall() -> None:
    clock = Clock()
    watch = StallWatch(30.0, clock)
    assert not look(watch, "c", pending=1)
    clock.now = 29.0
    assert not look(watch, "c", pending=1)
    clock.now = 30.0
    assert look(watch, "c", pending=1)
    clock.now = 31.0  # the rebind gets its own stall time
    assert not look(watch, "c", pending=1)
    clock.now = 61.0
    assert look(watch, "c", pending=1)


def test_a_redelivery_nobody_pulls_is_a_stall_and_a_replicas_live_loop_is_not() -> None:
    """After a broker restart the message in hand when it died waits to be delivered again (ack pending, nothing
    pending): with no pull request waiting, nobody will take it."""
    clock = Clock()
    watch = StallWatch(30.0, clock)
    for t in (0.0, 15.0):
        clock.now = t
        assert not look(watch, "dead", ack_pending=1, waiting=0)
        assert not look(watch, "replica-busy-elsewhere", ack_pending=1, waiting=1)  # another loop is asking
    clock.now = 30.0
    assert look(watch, "dead", ack_pending=1, waiting=0)
    assert not look(watch, "replica-busy-elsewhere", ack_pending=1, waiting=1)


def test_a_busy_consumer_an_empty_one_and_one_that_delivered_are_not_stalled() -> None:
    clock = Clock()
    watch = StallWatch(30.0, clock)
    for t in range(0, 200, 5):  # a long handler here: one in hand (no pull request meanwhile), more waiting
        clock.now = float(t)
        assert not look(watch, "busy", pending=5, ack_pending=1, in_hand=1)
        assert not look(watch, "empty")
    clock.now = 300.0
    assert not look(watch, "flowing", pending=3)
    for t in range(305, 500, 5):  # work keeps arriving at the handler between looks: idle only in passing
        clock.now = float(t)
        watch.delivered("flowing")
        assert not look(watch, "flowing", pending=3)


def test_idleness_is_counted_per_consumer_and_starts_over_when_work_is_in_hand() -> None:
    clock = Clock()
    watch = StallWatch(10.0, clock)
    look(watch, "a", pending=1)
    clock.now = 8.0
    assert not look(watch, "a", pending=1, ack_pending=1, in_hand=1)  # picked up: not idle
    look(watch, "b", pending=1)
    clock.now = 12.0
    assert not look(watch, "a", pending=1)  # idle again only since now
    clock.now = 18.0
    assert look(watch, "b", pending=1)
    assert not look(watch, "a", pending=1)
    clock.now = 22.0
    assert look(watch, "a", pending=1)
