"""The monitoring service's decisions: the canary's rule, which it shares with the registry.

The rule itself is `shared.canary` (the registry runs it on a release before promoting it); this module
names what the monitoring service decides with, so its file roles match every other service's.
"""

from __future__ import annotations

from weightflow.shared.canary import (
    PRECEDENCE,
    CanaryJudgement,
    Drift,
    DriftKind,
    integrity_failure,
    judge_canary,
    unreachable_failure,
)

__all__ = [
    "PRECEDENCE",
    "CanaryJudgement",
    "Drift",
    "DriftKind",
    "integrity_failure",
    "judge_canary",
    "unreachable_failure",
]
