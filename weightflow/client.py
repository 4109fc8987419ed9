"""What the CLI (and tests, and other tools) use to talk to a running weightflow: publish, read, follow.

Status comes from the event stream itself, never from a service's tables, so any operator with NATS
access sees exactly what the services announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from weightflow.contracts.base import SUBJECT_PREFIX, Event, parse_event
from weightflow.contracts.benchmark import NoCandidatePassed
from weightflow.contracts.fitting import FitFailed
from weightflow.contracts.monitoring import CanaryPassed
from weightflow.contracts.registry import PromotionAwaitingApproval, PromotionSkipped
from weightflow.contracts.requirements import (
    RequirementsAccepted,
    RequirementsChanged,
    RequirementsRejected,
    RequirementsSubmitted,
)
from weightflow.contracts.tuning import TuningGated, TuningSkipped
from weightflow.contracts.workflow import DeadLettered, RequestRefused, WorkflowHalted, WorkflowRerouted
from weightflow.shared.bus.streams import ensure_streams
from weightflow.shared.settings import Settings, split_urls

log = logging.getLogger("weightflow.client")


async def _quiet(exc: Exception) -> None:
    """nats-py's default error callback logs a traceback per failed attempt: the caller says it in one line."""
    log.debug("nats: %s", exc)


# How long a history read waits for the next message it knows is there before it says so (not a partial answer).
HISTORY_STALL_S = 30.0


async def _nothing_pending(sub: Any) -> bool:
    """Whether the ordered consumer behind `sub` has delivered everything (False while it cannot tell)."""
    try:
        info = await sub.consumer_info()
    except Exception:  # the consumer is being recreated, or its leader is being elected
        return False
    return int(info.num_pending or 0) == 0 and sub.pending_msgs == 0


class Client:
    def __init__(self, settings: Settings | None = None, *, read_only: bool = False) -> None:
        self.settings = settings or Settings()
        # read_only: only read what is there (`weightflow ui`); every other client makes sure the streams exist
        # (and match the settings) before it publishes or follows, as a service does.
        self.read_only = read_only
        self.nc: Any = None
        self.js: Any = None
        # Stream messages that are not events weightflow can read (a rogue publisher, a newer release):
        # (stream sequence, why) — skipped and reported, never a crash.
        self.skipped: list[tuple[int, str]] = []

    async def __aenter__(self) -> Client:
        try:
            url = self.settings.resolved_nats_url()
        except RuntimeError as exc:  # no URL set and no embedded stack: said as plainly as an unreachable one
            raise ConnectionError(str(exc)) from None
        try:
            servers = split_urls(url)  # a cluster's every server: whichever answers first, then the survivors
            self.nc = await nats.connect(servers, connect_timeout=3, max_reconnect_attempts=3, allow_reconnect=True,
                                         error_cb=_quiet)
        except Exception as exc:
            raise ConnectionError(f"cannot reach NATS at {url}: {exc}; is `weightflow up` running?") from exc
        self.js = self.nc.jetstream()
        if not self.read_only:
            await ensure_streams(self.js, self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.nc is not None:
            await self.nc.drain()

    async def publish(self, event: Event, msg_id: str | None = None) -> None:
        await self.publish_raw(event.subject(), event.to_bytes(), msg_id or str(event.event_id))

    async def stored_payload(self, sequence: int) -> bytes:
        """The bytes of one workflow-stream message by sequence (a dead letter recorded without them)."""
        msg = await self.js.get_msg(self.settings.stream, sequence)
        return bytes(msg.data or b"")

    async def publish_raw(self, subject: str, payload: bytes, msg_id: str) -> None:
        for attempt in range(5):
            try:
                await self.js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}, timeout=3)
                return
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))

    async def history(self, since: datetime | None = None) -> list[Event]:
        """Every event in the stream (or since a time), in order."""
        events: list[Event] = []
        async for event in self._read(since=since, follow=False):
            events.append(event)
        return events

    async def follow(self, since: datetime | None = None) -> AsyncGenerator[Event, None]:
        async for event in self._read(since=since, follow=True):
            yield event

    async def _read(self, *, since: datetime | None, follow: bool) -> AsyncIterator[Event]:
        info = await self.js.stream_info(self.settings.stream)
        last = info.state.last_seq
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
                                opt_start_time=since)
        if not follow and last == 0:
            return
        sub = await self.js.subscribe(f"{SUBJECT_PREFIX}.>", ordered_consumer=True, config=config)
        read_to = 0  # the last stream sequence delivered
        stalled_since = time.monotonic()
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0 if not follow else 3600)
                except TimeoutError:
                    if follow:
                        continue
                    # A quiet second is the end only when the consumer has nothing left for us: with a cluster
                    # electing a leader (or one node catching up) delivery pauses, and a history cut short there
                    # looks complete to whoever reads it.
                    if await _nothing_pending(sub):
                        return
                    if time.monotonic() - stalled_since > HISTORY_STALL_S:
                        raise TimeoutError(
                            f"reading stream {self.settings.stream}: no message for {HISTORY_STALL_S:.0f} s after "
                            f"sequence {read_to} of {last}; is every NATS node answering? (`weightflow doctor`)"
                        ) from None
                    continue
                read_to = msg.metadata.sequence.stream
                stalled_since = time.monotonic()
                try:
                    event = parse_event(msg.data)
                except ValueError as exc:
                    self.skipped.append((msg.metadata.sequence.stream, str(exc)[:200]))
                else:
                    yield event
                if not follow and msg.metadata.sequence.stream >= last:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


AWAITING_APPROVAL = "awaiting approval"


@dataclass
class RunTracker:
    """Follows one workflow across reroutes and says when it has reached an end."""

    run_ids: set[UUID]
    done_when: Callable[[Event], bool] = field(default=lambda e: isinstance(e, CanaryPassed))
    events: list[Event] = field(default_factory=list)
    outcome: str | None = None
    # Runs the loop-back opened: one that fails is not the end, the router answers it (a halt, or more).
    reroutes: set[UUID] = field(default_factory=set)
    # A release held for approval ends a workflow's part of the run; a request that continues it (`approve`,
    # which follows the waiting run and may first see the hold again) waits for its own answer instead.
    ends_at_approval: bool = True

    def feed(self, event: Event) -> bool:
        """Take one event; True when the run has ended (outcome set)."""
        if event.run_id not in self.run_ids:
            if isinstance(event, WorkflowRerouted) and event.new_run_id in self.run_ids:
                self.events.append(event)  # the link from the run that was rerouted into this one
            return False
        self.events.append(event)
        if isinstance(event, WorkflowRerouted):
            self.run_ids.add(event.new_run_id)
            if event.from_stage != "requirements.changed":
                self.reroutes.add(event.new_run_id)
        if self.done_when(event):
            self.outcome = "succeeded"
        elif isinstance(event, PromotionAwaitingApproval) and self.ends_at_approval:
            # under `promotion: manual` the workflow's part ends here; a person's approval continues it (a later
            # CanaryPassed on the same run then makes it "succeeded")
            self.outcome = AWAITING_APPROVAL
        elif failure_reason(event) and (event.run_id not in self.reroutes or isinstance(event, WorkflowHalted)):
            self.outcome = "failed"
        return self.outcome is not None


def failure_reason(event: Event) -> str | None:
    """Why this event ends a run unsuccessfully, or None."""
    if isinstance(event, RequirementsRejected):
        return "requirements rejected: " + "; ".join(event.errors)
    if isinstance(event, NoCandidatePassed):
        return "no candidate passed: " + event.recommendation.reason
    if isinstance(event, FitFailed):
        return "fit failed: " + event.reason
    if isinstance(event, TuningSkipped):
        return "tuning impossible: " + event.reason
    if isinstance(event, TuningGated) and not event.passed:
        return "tuned adapter refused: " + "; ".join(event.verdict.messages())
    if isinstance(event, PromotionSkipped):
        return "not promoted: " + event.reason
    if isinstance(event, RequestRefused):
        return "refused: " + event.reason
    if isinstance(event, WorkflowHalted):
        return f"halted: {event.reason}; " + "; ".join(event.advice)
    if isinstance(event, DeadLettered):
        return f"dead-lettered by {event.service} ({event.reason}): {event.error}"
    return None


NIL_RUN = UUID(int=0)  # what a dead letter of a payload with no readable run id carries


def starts_a_run(event: Event) -> bool:
    """A run is what requirements start: a submission or change, or an acceptance (a reroute starts with one).
    Operator requests (rollback, resume, canary), served-endpoint announcements and rogue payloads carry run
    ids of their own, but they are not runs."""
    return isinstance(event, RequirementsSubmitted | RequirementsChanged | RequirementsAccepted) \
        and event.run_id != NIL_RUN


def runs_of(events: Iterable[Event]) -> dict[UUID, list[Event]]:
    """The events of each run, runs in the order they started; events of anything else are left out."""
    by_id: dict[UUID, list[Event]] = {}
    runs: set[UUID] = set()
    for e in events:
        by_id.setdefault(e.run_id, []).append(e)
        if starts_a_run(e):
            runs.add(e.run_id)
    return {run_id: evs for run_id, evs in by_id.items() if run_id in runs}


def run_state(run_id: UUID, events: Iterable[Event]) -> tuple[str, UUID | None]:
    """One run's own state, from its own events: its outcome, "rerouted" (with the run it was rerouted into)
    when the loop-back or a change moved its work on after its last outcome, else "in progress"."""
    tracker = RunTracker({run_id})
    state: tuple[str, UUID | None] = ("in progress", None)
    for e in events:
        if e.run_id != run_id:
            continue
        before = tracker.outcome
        tracker.feed(e)
        if isinstance(e, WorkflowRerouted):
            state = ("rerouted", e.new_run_id)
        elif tracker.outcome is not None and (tracker.outcome != before or state[0] == "in progress"):
            state = (tracker.outcome, None)
    return state


def describe_state(state: tuple[str, UUID | None]) -> str:
    word, to = state
    return f"rerouted → {to}" if to is not None else word


def find_run(events: list[Event], prefix: str) -> UUID | str:
    """The run named by an id prefix (the latest run when empty), or why there is none."""
    runs = list(runs_of(events))
    if not runs:
        return "no runs yet"
    if not prefix:
        return runs[-1]
    matches = [r for r in runs if str(r).startswith(prefix)]
    if len(matches) != 1:
        return f"{'no' if not matches else 'several'} runs match {prefix!r}; see `weightflow runs`"
    return matches[0]


async def track(client: Client, event: Event, *, timeout: float,
                done: Callable[[Event], bool] | None = None,
                on_event: Callable[[Event], None] | None = None) -> RunTracker:
    """Publish `event` and follow its run (across reroutes) until it ends or `timeout` passes."""
    tracker = RunTracker({event.run_id}) if done is None else RunTracker({event.run_id}, done, ends_at_approval=False)
    since = datetime.now(UTC) - timedelta(seconds=1)
    await client.publish(event)

    async def follow() -> None:
        async with contextlib.aclosing(client.follow(since=since)) as stream:
            async for e in stream:
                if on_event is not None and e.run_id in tracker.run_ids:
                    on_event(e)
                if tracker.feed(e):
                    return

    try:
        await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        tracker.outcome = "timed out"
    return tracker
