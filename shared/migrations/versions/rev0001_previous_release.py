"""The schema as the last release before migrations made it (table schema 2).

Revision ID: 0001
Revises:
Create Date: 2026-12-06

Every table is created only where missing, so this revision also adopts a database made by that release: it
created each table when a service first used it, so such a database may lack some (`monitoring_endpoints`
came late). Frozen: later changes are later revisions.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)  # sqlmodel's UTCDateTime


Table = tuple[str, list[Any], tuple[str, ...]]


def tables() -> list[Table]:
    """(name, columns and constraints, indexed columns): sqlmodel names each index ix_<table>_<column>."""
    s, i, b, f = sa.String, sa.Integer, sa.Boolean, sa.Float

    def t(name: str, *items: Any, index: tuple[str, ...] = ()) -> Table:
        return name, list(items), index

    def c(name: str, type_: Any, null: bool = False, pk: bool = False) -> sa.Column[Any]:
        return sa.Column(name, type_, nullable=null, primary_key=pk)

    return [
        t("benchmark_results", c("id", i, pk=True), c("run_id", s), c("candidate", s), c("variant", s),
          c("tree_digest", s), c("request_id", s, True), c("passed", b), c("measurement_key", s),
          c("measurement_json", s), c("verdict_json", s), c("measured_at", TIME),
          index=("measurement_key", "run_id")),
        t("fitting_attempts", c("request_id", s, pk=True), c("run_id", s), c("selection_json", s),
          c("model_json", s), c("budget_json", s), c("steps_json", s), c("remaining_json", s), c("status", s),
          c("created_at", TIME), c("finished_at", TIME, True), index=("run_id",)),
        t("monitoring_canaries", c("id", i, pk=True), c("deployment", s), c("manifest_id", s), c("passed", b),
          c("kind", s, True), c("measurement_json", s, True), c("verdict_json", s), c("ran_at", TIME),
          index=("deployment",)),
        t("monitoring_endpoints", c("deployment", s, pk=True), c("url", s), c("online", b), c("announced_at", TIME)),
        t("monitoring_watches", c("deployment", s, pk=True), c("manifest_id", s), c("run_id", s),
          c("manifest_run_id", s), c("promoted_event_id", s), c("interval_s", f), c("next_due_at", TIME),
          c("updated_at", TIME)),
        t("registry_deployments", c("name", s, pk=True), c("releases_json", s), c("position", i),
          c("latest_version", i), c("updated_at", TIME)),
        t("registry_manifests", c("manifest_id", s, pk=True), c("deployment", s), c("run_id", s),
          c("runbook_digest", s), c("requirements_version", i), c("canary_passed", b), c("created_at", TIME),
          index=("deployment",)),
        t("requirements_loop", c("deployment", s, pk=True), c("version", i, pk=True), c("reroutes", i),
          c("in_flight_run_id", s, True), c("halted", b), c("exclusions_json", s), c("attempts_json", s),
          c("updated_at", TIME)),
        t("requirements_runs", c("run_id", s, pk=True), c("deployment", s), c("version", i), c("attempt", i),
          c("open", b), c("outcome", s, True), c("created_at", TIME), index=("deployment",)),
        t("requirements_versions", c("id", i, pk=True), c("deployment", s), c("version", i), c("sequence", i),
          c("run_id", s), c("digest", s), c("document", s), c("context_json", s), c("accepted_at", TIME),
          sa.UniqueConstraint("deployment", "version"), index=("deployment", "run_id")),
        t("tuning_runs", c("id", i, pk=True), c("run_id", s), c("base_tree_digest", s), c("adapter_tree_digest", s),
          c("train_data_digest", s), c("task_score_before", f), c("task_score", f), c("general_before", f),
          c("general_after", f), c("passed", b), c("created_at", TIME), index=("run_id",)),
        t("wf_audit", c("service", s, pk=True), c("stream_sequence", i, pk=True), c("durable", s), c("subject", s),
          c("event_id", s, True), c("run_id", s, True), c("seen_at", TIME)),
        t("wf_dead_letters", c("id", i, pk=True), c("service", s), c("subject", s), c("reason", s), c("error", s),
          c("run_id", s, True), c("event_id", s, True), c("stream_sequence", i, True), c("deliveries", i),
          c("trace_id", s, True), c("payload_digest", s, True), c("payload_bytes", i), c("created_at", TIME),
          index=("run_id", "service", "stream_sequence")),
        t("wf_inbox", c("service", s, pk=True), c("event_id", s, pk=True), c("event_type", s), c("run_id", s),
          c("processed_at", TIME), index=("run_id",)),
        t("wf_outbox", c("id", i, pk=True), c("event_id", s), c("service", s), c("subject", s),
          c("payload", sa.LargeBinary), c("created_at", TIME), c("published_at", TIME, True), c("attempts", i),
          c("last_error", s, True), c("parked_at", TIME, True), sa.UniqueConstraint("event_id"),
          index=("published_at", "service")),
        t("wf_schema", sa.Column("id", i, primary_key=True, autoincrement=False), c("version", i)),
    ]


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, items, indexed in tables():
        if name in existing:
            continue
        op.create_table(name, *items)
        for column in indexed:
            op.create_index(f"ix_{name}_{column}", name, [column])
    if not op.get_bind().execute(sa.text("SELECT count(*) FROM wf_schema")).scalar_one():
        op.execute("INSERT INTO wf_schema (id, version) VALUES (1, 2)")


def downgrade() -> None:
    for name, _, _ in reversed(tables()):
        op.drop_table(name)
