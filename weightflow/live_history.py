"""What was live on a deployment, when, and why it changed: a projection of the event stream.

Answers "which release served at time T" from the events alone (promotions, rollbacks, and releases that
were registered but kept from going live), so an audit needs no service's tables. Under manual promotion a
release's wait and the decision on it (who, and why) are changes too; an approved promotion says who approved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from weightflow.contracts.base import Event
from weightflow.contracts.monitoring import CanaryFailed
from weightflow.contracts.registry import (
    DeploymentPromoted,
    PromotionAwaitingApproval,
    PromotionDecided,
    PromotionSkipped,
    RolledBack,
)

Kind = Literal["promoted", "rolled back", "not promoted", "awaiting approval", "rejected"]
# Changes that leave what serves as it was.
KEPT: frozenset[str] = frozenset({"not promoted", "awaiting approval", "rejected"})


@dataclass(frozen=True)
class Change:
    """One change of what serves (or a release kept from serving: `changed_live` false)."""

    at: datetime
    kind: Kind
    manifest_id: str
    why: str
    run_id: str

    @property
    def changed_live(self) -> bool:
        return self.kind not in KEPT


def changes(events: Iterable[Event], deployment: str) -> list[Change]:
    """The deployment's changes in stream order. A rollback's own promotion is one change, said as a rollback."""
    out: list[Change] = []
    rollbacks: set[object] = set()
    approvals: dict[object, PromotionDecided] = {}
    for e in events:
        if getattr(e, "deployment", None) != deployment:
            continue
        if isinstance(e, RolledBack):
            rollbacks.add(e.causation_id)
            how = "automatically" if e.automatic else "by an operator"
            out.append(
                Change(
                    e.occurred_at,
                    "rolled back",
                    e.to_manifest_id,
                    f"{how} from {e.from_manifest_id[:12]}: {e.reason}",
                    str(e.run_id),
                )
            )
        elif isinstance(e, DeploymentPromoted):
            if e.causation_id in rollbacks:
                continue
            approval = approvals.get(e.causation_id)
            why = (
                f"approved by {approval.decided_by}: {approval.reason} (requirements v{e.requirements_version})"
                if approval is not None
                else f"registered by run {str(e.run_id)[:8]} under requirements v{e.requirements_version}, "
                "and its baseline passed the canary's rule"
            )
            out.append(Change(e.occurred_at, "promoted", e.manifest_id, why, str(e.run_id)))
        elif isinstance(e, PromotionAwaitingApproval):
            live = f"it would replace {e.live_manifest_id[:12]}" if e.live_manifest_id else "nothing is live yet"
            out.append(
                Change(
                    e.occurred_at,
                    "awaiting approval",
                    e.manifest_id,
                    f"manual promotion: baseline passed the canary's rule; {live}",
                    str(e.run_id),
                )
            )
        elif isinstance(e, PromotionDecided):
            if e.decision == "approved":
                approvals[e.causation_id] = e
            else:
                out.append(
                    Change(
                        e.occurred_at,
                        "rejected",
                        e.manifest_id,
                        f"rejected by {e.decided_by}: {e.reason}",
                        str(e.run_id),
                    )
                )
        elif isinstance(e, CanaryFailed) and e.before_promotion:
            out.append(
                Change(
                    e.occurred_at,
                    "not promoted",
                    e.manifest_id,
                    "its registration baseline failed the canary: " + "; ".join(e.reasons),
                    str(e.run_id),
                )
            )
        elif isinstance(e, PromotionSkipped):
            out.append(Change(e.occurred_at, "not promoted", e.manifest_id, e.reason, str(e.run_id)))
    return out


def live_at(history: list[Change], at: datetime) -> Change | None:
    """The change that put the release live at `at` (None: nothing was live yet)."""
    live = [c for c in history if c.changed_live and c.at <= at]
    return live[-1] if live else None
