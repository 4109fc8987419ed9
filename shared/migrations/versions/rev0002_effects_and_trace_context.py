"""Effects keyed by business key (`wf_effects`, e19f998) and the outbox's committing span (`wf_outbox.trace_context`,
80ed881): table schema 3.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

Both are added only where missing: a database made between those commits and migrations has them already.
The `wf_schema` row goes to 3, which the releases from before migrations refuse; from here on the revision
in `wf_alembic_version` says what a database is, and that row stays 3.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    found = sa.inspect(op.get_bind())
    if "wf_effects" not in found.get_table_names():
        op.create_table("wf_effects",
                        sa.Column("service", sa.String(), nullable=False, primary_key=True),
                        sa.Column("key", sa.String(), nullable=False, primary_key=True),
                        sa.Column("event_id", sa.String(), nullable=False),
                        sa.Column("run_id", sa.String(), nullable=False),
                        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False))
        op.create_index("ix_wf_effects_run_id", "wf_effects", ["run_id"])
    if "trace_context" not in {column["name"] for column in found.get_columns("wf_outbox")}:
        with op.batch_alter_table("wf_outbox") as batch:
            batch.add_column(sa.Column("trace_context", sa.String(), nullable=True))
    op.execute("UPDATE wf_schema SET version = 3 WHERE id = 1")


def downgrade() -> None:
    op.execute("UPDATE wf_schema SET version = 2 WHERE id = 1")
    with op.batch_alter_table("wf_outbox") as batch:
        batch.drop_column("trace_context")
    op.drop_table("wf_effects")
