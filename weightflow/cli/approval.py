"""Manual promotion: `weightflow approve|reject DEPLOYMENT MANIFEST --reason TEXT`.

Under `deployment.promotion: manual` the registry holds a release that would go live (PromotionAwaitingApproval)
until one of these commands decides. Who decided is the OS user and the NATS user the command connects as; only
the admin (CLI) NATS user may publish a decision (`weightflow nats-config`), so a service cannot approve.
"""

from __future__ import annotations

import getpass
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import typer

from weightflow.cli.common import console, err, positive, request, run
from weightflow.client import Client
from weightflow.contracts.base import Event
from weightflow.contracts.registry import (
    DeploymentPromoted,
    PromotionApproved,
    PromotionAwaitingApproval,
    PromotionDecided,
    PromotionRejected,
    PromotionSkipped,
)
from weightflow.contracts.workflow import RequestRefused
from weightflow.render import summary
from weightflow.shared.settings import Settings

REASON = typer.Option(..., "--reason", help="why, recorded with the decision (shown by `weightflow history`)")
TIMEOUT = typer.Option(60, callback=positive, help="seconds to wait for the registry's answer")


def decider(settings: Settings) -> str:
    """'os-user@nats-user': the person at the keyboard and the NATS account they publish as ('anonymous' when
    the URL names no user, as the embedded single-user stack does)."""
    servers = settings.resolved_nats_servers()
    nats_user = (urlsplit(servers[0]).username if servers else None) or "anonymous"
    try:
        os_user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        os_user = "unknown"
    return f"{os_user}@{nats_user}"


def waiting_run(settings: Settings, deployment: str, manifest: str) -> UUID | None:
    """The run whose release waits for this decision: the decision continues that run (its promotion and first
    canary carry its run id), so `weightflow status` shows the run succeeded once approved, not waiting forever."""

    async def go() -> list[object]:
        async with Client(settings) as client:
            return list(await client.history())

    for e in reversed(run(go())):
        if isinstance(e, PromotionAwaitingApproval) and (e.deployment, e.manifest_id) == (deployment, manifest):
            return e.run_id
    return None


def _decide(
    kind: type[PromotionApproved] | type[PromotionRejected], deployment: str, manifest: str, reason: str, timeout: float
) -> None:
    if not reason.strip():
        err.print("[red]error:[/] --reason is empty; say why, it is recorded with the decision")
        raise typer.Exit(2)
    settings = Settings()
    event = kind(
        run_id=waiting_run(settings, deployment, manifest) or uuid4(),
        deployment=deployment,
        manifest_id=manifest,
        decided_by=decider(settings),
        reason=reason.strip(),
    )
    approving = kind is PromotionApproved

    def answered(e: Event) -> bool:
        # only what answers this decision: the waiting run may already hold an earlier decision's answers
        if e.causation_id != event.event_id:
            return False
        if isinstance(e, RequestRefused):
            return True
        if not approving:
            return isinstance(e, PromotionDecided)
        return isinstance(e, DeploymentPromoted | PromotionSkipped)

    tracker = request(settings, event, answered, timeout)
    answers = [
        e
        for e in tracker.events
        if isinstance(e, PromotionDecided | DeploymentPromoted | PromotionSkipped | RequestRefused)
        and e.causation_id == event.event_id
    ]
    if not answers:
        err.print(f"[red]no answer within {timeout:g} s[/] (is the registry service running?)")
        raise typer.Exit(1)
    for answer in answers:
        if isinstance(answer, RequestRefused):
            err.print(f"[red]{'approval' if approving else 'rejection'} refused:[/] {answer.reason}", highlight=False)
            raise typer.Exit(1)
        console.print(summary(answer), markup=False, highlight=False)
    if any(isinstance(a, PromotionSkipped) for a in answers):
        raise typer.Exit(1)


def approve(
    deployment: str,
    manifest: str = typer.Argument(..., help="the full manifest id awaiting approval"),
    reason: str = REASON,
    timeout: float = TIMEOUT,
) -> None:
    """Approve a release awaiting approval: the registry promotes it as the automatic path would."""
    _decide(PromotionApproved, deployment, manifest, reason, timeout)


def reject(
    deployment: str,
    manifest: str = typer.Argument(..., help="the full manifest id awaiting approval"),
    reason: str = REASON,
    timeout: float = TIMEOUT,
) -> None:
    """Reject a release awaiting approval: recorded with who and why; the live release keeps serving."""
    _decide(PromotionRejected, deployment, manifest, reason, timeout)


def register(app: typer.Typer) -> None:
    for command in (approve, reject):
        app.command()(command)
