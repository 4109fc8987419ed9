"""Alembic's entry point for weightflow's revisions: always handed a connection by shared.migrations, which holds
the schema lock around it (there is no alembic.ini and no offline mode)."""

from __future__ import annotations

from typing import Any

from alembic import context

from weightflow.shared import migrations


def include_name(name: str | None, type_: str, _parent: Any) -> bool:
    """Autogenerate reads our tables only from the database: another application's are not ours to migrate."""
    return type_ != "table" or (name is not None and migrations.managed(name))


def include_object(_object: Any, name: str | None, type_: str, _reflected: bool, _compare_to: Any) -> bool:
    """... and compares our models only: a plugin's or a test's tables are created as found, never migrated."""
    return include_name(name, type_, None)


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `weightflow db upgrade` (shared.migrations.upgrade), not alembic's CLI")
context.configure(connection=connection, target_metadata=migrations.metadata(), render_as_batch=True,
                  version_table=migrations.VERSION_TABLE, include_name=include_name, include_object=include_object,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
