"""A consumer holding work that nobody pulls is noticed; a busy or briefly idle one never is."""

from __future__ import annotations

from weightflow.shared.bus.stalls import StallWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_work_waiting_with_nothing_in_hand_for_the_stall_time_is_a_stall() -> None:
    clock = Clock()
    watch = StallWatch(30.0, clock)
    assert not watch.observe("c", pending=1, ack_pending=0)
    clock.now = 29.0
    assert not watch.observe("c", pending=1, ack_pending=0)
    clock.now = 30.0
    assert watch.observe("c", pending=1, ack_pending=0)
    clock.now = 31.0  # the rebind gets its own stall time
    assert not watch.observe("c", pending=1, ack_pending=0)
    clock.now = 61.0
    assert watch.observe("c", pending=1, ack_pending=0)


def test_a_busy_consumer_an_empty_one_and_one_that_delivered_are_not_stalled() -> None:
    clock = Clock()
    watch = StallWatch(30.0, clock)
    for t in range(0, 200, 5):  # a long handler: one in hand, more waiting
        clock.now = float(t)
        assert not watch.observe("busy", pending=5, ack_pending=1)
        assert not watch.observe("empty", pending=0, ack_pending=0)
    clock.now = 300.0
    assert not watch.observe("flowing", pending=3, ack_pending=0)
    for t in range(305, 500, 5):  # work keeps arriving at the handler between looks: idle only in passing
        clock.now = float(t)
        watch.delivered("flowing")
        assert not watch.observe("flowing", pending=3, ack_pending=0)


def test_idleness_is_counted_per_consumer_and_starts_over_when_work_is_in_hand() -> None:
    clock = Clock()
    watch = StallWatch(10.0, clock)
    watch.observe("a", pending=1, ack_pending=0)
    clock.now = 8.0
    assert not watch.observe("a", pending=1, ack_pending=1)  # picked up: not idle
    watch.observe("b", pending=1, ack_pending=0)
    clock.now = 12.0
    assert not watch.observe("a", pending=1, ack_pending=0)  # idle again only since now
    clock.now = 18.0
    assert watch.observe("b", pending=1, ack_pending=0)
    assert not watch.observe("a", pending=1, ack_pending=0)
    clock.now = 22.0
    assert watch.observe("a", pending=1, ack_pending=0)
