"""monitoring_watches.next_due_at indexed: the canary scheduler reads only due rows, so a tick costs the same
however many deployments are watched and not due (issue 26, target 3).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEX = "ix_monitoring_watches_next_due_at"


def upgrade() -> None:
    found = sa.inspect(op.get_bind())
    if INDEX not in {index["name"] for index in found.get_indexes("monitoring_watches")}:
        op.create_index(INDEX, "monitoring_watches", ["next_due_at"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="monitoring_watches")
