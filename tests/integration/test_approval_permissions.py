"""Only a permitted NATS user may approve (issue 23, part 5): against a real nats-server started with the config
`weightflow nats-config` generates, every service user is refused publishing a promotion decision (the registry,
which acts on them, included) and the admin (CLI) user's decision lands on the stream."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from weightflow.client import Client
from weightflow.contracts.registry import PromotionApproved, PromotionRejected
from weightflow.shared import nats_auth

from .test_nats_permissions import SERVICE_DEFS, SERVICES, Conn, SecuredNats, secured  # noqa: F401 (fixture)

DECISIONS = (PromotionApproved, PromotionRejected)


def test_no_service_user_is_granted_a_decision() -> None:
    users = nats_auth.user_names(SERVICE_DEFS)
    config = nats_auth.build_config(SERVICE_DEFS, nats_auth.generate_passwords(users), store_dir=None)
    perms = {name: user["permissions"] for name, user in nats_auth.users_of(config).items()}
    subjects = {cls.subject() for cls in DECISIONS}
    assert set(nats_auth.ADMIN_ONLY) == set(DECISIONS)
    for name in SERVICES:
        assert not subjects & set(perms[name]["publish"]["allow"]), name
    assert perms[nats_auth.ADMIN_USER]["publish"] == {"allow": [">"]}


def test_only_admin_publishes_a_decision(secured: SecuredNats) -> None:  # noqa: F811 (the imported fixture)
    def decision(cls: type[PromotionApproved | PromotionRejected]) -> PromotionApproved | PromotionRejected:
        return cls(run_id=uuid4(), deployment="support-tickets", manifest_id="f" * 64, decided_by="me@admin",
                   reason="reviewed")

    async def scenario() -> None:
        for name in SERVICES:
            user = await Conn().connect(secured.url(name), inbox_prefix=f"_INBOX.{name}")
            try:
                for cls in DECISIONS:
                    await user.nc.publish(cls.subject(), decision(cls).model_dump_json().encode())
                    await user.denied("publish", cls.subject())
            finally:
                await user.close()
        sent = [decision(cls) for cls in DECISIONS]
        async with Client(secured.settings("admin")) as admin:
            for event in sent:
                await admin.publish(event)
            on_stream = {e.event_id for e in await admin.history()}
        assert {e.event_id for e in sent} <= on_stream

    asyncio.run(scenario())
    assert "promotion_approved" in secured.violations() and "promotion_rejected" in secured.violations()
