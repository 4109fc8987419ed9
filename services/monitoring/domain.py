"""The monitoring service's decisions: the canary's rule, which it shares with the registry.

The rule itself is `shared.canary` (the registry runs it on a release before promoting it); this module
names what the monitoring service decides with, so its file roles match every other service's.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime

from weightflow.shared.canary import (
    PRECEDENCE,
    CanaryJudgement,
    Drift,
    DriftKind,
    integrity_failure,
    judge_canary,
    unreachable_failure,
)


def phase_s(deployment: str, interval_s: float) -> float:
    """Where in every interval the deployment's canaries fall, from a hash of its name: deployments promoted
    together (a fleet rolled out at once) do not run their canaries together ever after, and the load spreads
    evenly over the interval, as Prometheus spreads its scrapes."""
    digest = hashlib.sha256(deployment.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval_s


def next_due(deployment: str, interval_s: float, now: datetime) -> datetime:
    """The deployment's next slot on a fixed grid (its phase plus whole intervals from the epoch), at least half an
    interval after `now`: a late tick does not drift the schedule, a promotion's first canary is not followed by a
    scheduled one a moment later, and a monitor that was down for several
    intervals runs one canary when it is back, not the backlog."""
    if interval_s <= 0:
        return now
    phase = phase_s(deployment, interval_s)
    earliest = now.timestamp() + interval_s / 2
    slot = (math.floor((earliest - phase) / interval_s) + 1) * interval_s + phase
    if slot <= earliest:  # floating point put it on the boundary itself
        slot += interval_s
    return datetime.fromtimestamp(slot, tz=UTC)


__all__ = [
    "PRECEDENCE",
    "CanaryJudgement",
    "Drift",
    "DriftKind",
    "integrity_failure",
    "judge_canary",
    "next_due",
    "phase_s",
    "unreachable_failure",
]
