"""The one delivery pipeline: what happens to a message between its arrival and its settlement.

Both runners (the NATS runtime and the in-process runner) pass every message through `deliver`, built once from
the steps below, outermost first; a step is a small middleware (`async (runner, message, next) -> Verdict`),
so a rule is one function, read in one place. The pipeline decides; the runner settles the verdict with its
own transport (ack, NAK with a delay, TERM and a dead-letter row; or, in process, the next queue entry).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from weightflow.contracts.base import Event
from weightflow.contracts.workflow import RunRecord
from weightflow.shared.bus.errors import PermanentError
from weightflow.shared.bus.runs import check_run
from weightflow.shared.bus.service import Delivery, HandlerSpec
from weightflow.shared.settings import Settings

log = logging.getLogger("weightflow.bus")


@dataclass(frozen=True)
class Message:
    """One delivery of one event to one handler; `raw` is the transport's own message (None in process)."""

    spec: HandlerSpec[Any]
    event: Event
    delivery: Delivery
    raw: Any = None


@dataclass(frozen=True)
class Done:
    """Handled and committed (`handled`), or found already handled (False): ack it."""

    handled: bool


@dataclass(frozen=True)
class Retry:
    """Failed, with deliveries left: give it back to be delivered again after `delay_s`."""

    delay_s: float


@dataclass(frozen=True)
class DeadLetter:
    """Never to be delivered again: record it with its reason, then drop it."""

    reason: str
    error: str


@dataclass(frozen=True)
class HandBack:
    """Not worked on here (the runner is stopping): a replica or this service's restart takes it."""


Verdict = Done | Retry | DeadLetter | HandBack


class Runner(Protocol):
    """What a runner lends the pipeline."""

    name: str
    settings: Settings
    stopping: bool

    def working_on(self, message: Message) -> AbstractAsyncContextManager[None]:
        """Held while the handler runs (the NATS runtime sends in-progress heartbeats)."""
        ...

    async def run_record(self, run_id: UUID) -> RunRecord | None: ...

    async def process(self, message: Message) -> bool:
        """Handle and commit exactly once (shared.bus.processing); False when it was handled already."""
        ...


Next = Callable[[Message], Awaitable[Verdict]]
Step = Callable[[Runner, Message, Next], Awaitable[Verdict]]


def backoff_s(deliveries: int, cap: float) -> float:
    return float(min(2.0**deliveries, cap))


async def hand_back_when_stopping(runner: Runner, message: Message, call_next: Next) -> Verdict:
    return HandBack() if runner.stopping else await call_next(message)


async def dead_letter_when_exhausted(runner: Runner, message: Message, call_next: Next) -> Verdict:
    """A message delivered past the budget without an ack crashed, hung or was killed every time."""
    budget, delivered = runner.settings.max_deliver, message.delivery.deliveries
    if delivered > budget:
        return DeadLetter("exhausted", f"delivered {delivered - 1} times without an ack: the {runner.name} handler "
                                       f"crashed, hung or was killed every time (see its log)")
    return await call_next(message)


async def keep_working(runner: Runner, message: Message, call_next: Next) -> Verdict:
    async with runner.working_on(message):
        return await call_next(message)


async def dead_letter_permanent_errors(runner: Runner, message: Message, call_next: Next) -> Verdict:
    try:
        return await call_next(message)
    except PermanentError as exc:
        return DeadLetter(exc.reason, f"{type(exc).__name__}: {exc}")


async def retry_failures(runner: Runner, message: Message, call_next: Next) -> Verdict:
    """Any other failure is retried with a growing delay, and dead-lettered at the last delivery of the budget."""
    try:
        return await call_next(message)
    except PermanentError:
        raise
    except Exception as exc:
        budget, delivered = runner.settings.max_deliver, message.delivery.deliveries
        log.exception("%s failed on %s (delivery %d of %d)", runner.name, message.event.type_name(), delivered,
                      budget)
        if delivered >= budget:
            return DeadLetter("exhausted", f"{type(exc).__name__}: {exc} (after {delivered} deliveries)")
        return Retry(backoff_s(delivered, runner.settings.retry_backoff_cap_s))


async def check_the_run(runner: Runner, message: Message, call_next: Next) -> Verdict:
    """A handler that needs a run sees only events of runs the requirements service accepted (and, for an event
    carrying a run context, with the requirements that run was accepted with)."""
    if message.spec.requires_run:
        check_run(message.event, await runner.run_record(message.event.run_id))
    return await call_next(message)


async def process_once(runner: Runner, message: Message) -> Verdict:
    return Done(await runner.process(message))


PIPELINE: tuple[Step, ...] = (hand_back_when_stopping, dead_letter_when_exhausted, keep_working,
                              dead_letter_permanent_errors, retry_failures, check_the_run)


async def deliver(runner: Runner, message: Message) -> Verdict:
    """`message` through every step of PIPELINE, then the handler."""

    def chain(index: int) -> Next:
        if index == len(PIPELINE):
            return lambda m: process_once(runner, m)
        step, rest = PIPELINE[index], chain(index + 1)
        return lambda m: step(runner, m, rest)

    return await chain(0)(message)

