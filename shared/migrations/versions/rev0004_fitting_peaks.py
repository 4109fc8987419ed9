"""fitting_peaks: a variant's measured peak kept by what it depends on, so a run of a model already measured at the
same shape does not start a fresh interpreter to measure it again (issue 26, target 2: per-run overhead).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "fitting_peaks" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table("fitting_peaks",
                    sa.Column("key", sa.String(), nullable=False, primary_key=True),
                    sa.Column("tree_digest", sa.String(), nullable=False),
                    sa.Column("peak_json", sa.String(), nullable=False),
                    sa.Column("run_id", sa.String(), nullable=False),
                    sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False))
    op.create_index("ix_fitting_peaks_tree_digest", "fitting_peaks", ["tree_digest"])


def downgrade() -> None:
    op.drop_index("ix_fitting_peaks_tree_digest", table_name="fitting_peaks")
    op.drop_table("fitting_peaks")
