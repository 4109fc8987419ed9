"""Schema migrations (Alembic), run by `weightflow db upgrade` and checked by every service at start.

The revision scripts live in `versions/` inside this package, so an installed weightflow carries them and
no alembic.ini is read at run time. A brand-new database is made at the head revision by whichever service
starts first (every table, then stamped), so the embedded default needs no extra command; a database that is
behind head is refused with the command that upgrades it, because six services must not race to alter it.
Both happen under a lock (a PostgreSQL advisory lock, a SQLite exclusive transaction) held for one
transaction: services starting together on a fresh database create it once.

A new revision (after changing a table in shared/db.py or services/<name>/tables.py), from the repository:

    python -c "from alembic import command; from shared import migrations; \\
        command.revision(migrations.config(), 'why', rev_id='0003')"

then write its upgrade (`render_as_batch` style, so SQLite can ALTER) and run the migration tests.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, insert, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from weightflow.contracts.topology import SERVICES
from weightflow.shared.db import SCHEMA_VERSION, SchemaMismatchError, SchemaRecord

SCRIPTS = Path(__file__).resolve().parent
UPGRADE = "weightflow db upgrade"
# Our own name for Alembic's revision record: a database shared with another Alembic-managed application keeps
# its `alembic_version` to itself, and we never read that application's revision as ours.
VERSION_TABLE = "wf_alembic_version"
# Table schemas of releases from before migrations (the `wf_schema` row) that revision 0001 adopts.
ADOPTABLE = (2, 3)
# Our tables, which only migrations change; others in the metadata (a plugin's, a test's) are created as found.
MANAGED_PREFIXES = ("wf_", *(f"{name}_" for name in SERVICES))

# Alembic logs its plugins and dialect at INFO on every service start; what happened is ours to say.
logging.getLogger("alembic").setLevel(logging.WARNING)

Kind = Literal["empty", "current", "behind", "ahead", "legacy", "unrecognised"]


@dataclass(frozen=True)
class SchemaState:
    kind: Kind
    revision: str | None = None  # alembic's, or None
    legacy_version: int | None = None  # the `wf_schema` row of a database from before migrations

    def describe(self) -> str:
        if self.kind == "empty":
            return "empty (the first service to start, or `weightflow db upgrade`, creates it)"
        if self.kind == "legacy":
            return f"table schema {self.legacy_version}, from before migrations"
        if self.kind == "unrecognised":
            return "weightflow tables with no schema record"
        return f"revision {self.revision}" + (" (head)" if self.kind == "current" else "")


def managed(table_name: str) -> bool:
    return table_name.startswith(MANAGED_PREFIXES) and table_name != VERSION_TABLE


def migration_context(conn: Connection) -> MigrationContext:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})


def metadata() -> MetaData:
    """Every table of every service: a process imports only its own service's, but a database is made whole."""
    for name in SERVICES:
        importlib.import_module(f"weightflow.services.{name}.tables")
    return SQLModel.metadata


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("file_template", "rev%%(rev)s_%%(slug)s")  # an importable name (versions/ is a package)
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def scripts() -> ScriptDirectory:
    """The revisions this release ships (read once per process)."""
    return ScriptDirectory.from_config(config())


def head() -> str:
    revision = scripts().get_current_head()
    assert revision is not None
    return revision


def where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def state(conn: Connection) -> SchemaState:
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        revisions = migration_context(conn).get_current_heads()
        if len(revisions) == 1:
            revision = revisions[0]
            if revision == head():
                return SchemaState("current", revision)
            known = {script.revision for script in scripts().walk_revisions()}
            return SchemaState("behind" if revision in known else "ahead", revision)
    if "wf_schema" in tables:
        version = conn.execute(text("SELECT version FROM wf_schema WHERE id = 1")).scalar()
        if version is not None:
            return SchemaState("legacy", legacy_version=int(version))
    if any(managed(name) for name in tables):
        return SchemaState("unrecognised")
    return SchemaState("empty")


def refusal(engine: Engine, found: SchemaState) -> SchemaMismatchError:
    """What a service says about a database it cannot use, and what to do."""
    db = where(engine)
    if found.kind == "behind" or (found.kind == "legacy" and found.legacy_version in ADOPTABLE):
        return SchemaMismatchError(
            f"the database {db} is at {found.describe()}; this weightflow needs revision {head()}: run "
            f"`{UPGRADE}` (with the same WEIGHTFLOW_DATABASE_URL or WEIGHTFLOW_HOME), then start the services again")
    if found.kind == "ahead":
        return SchemaMismatchError(
            f"the database {db} is at revision {found.revision}, which this weightflow does not know (it needs "
            f"{head()}): it was upgraded by a newer release; run that release, or point WEIGHTFLOW_DATABASE_URL "
            "at another database")
    if found.kind == "legacy":
        return SchemaMismatchError(
            f"the database {db} has table schema {found.legacy_version}, older than any this release can upgrade "
            f"({', '.join(map(str, ADOPTABLE))}): start with a fresh WEIGHTFLOW_HOME (or WEIGHTFLOW_DATABASE_URL)")
    return SchemaMismatchError(
        f"the database {db} holds weightflow tables but no schema record (not made by weightflow, or a copy cut "
        "short): point WEIGHTFLOW_DATABASE_URL at an empty database or a fresh WEIGHTFLOW_HOME")


@contextmanager
def locked(engine: Engine) -> Iterator[Connection]:
    """One transaction that no other weightflow process preparing this database runs beside; committed at the end.

    PostgreSQL: an advisory lock scoped to the transaction and to this database. SQLite: an exclusive
    transaction (its DDL is transactional, so a half-made schema is never seen)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('weightflow schema'), "
                              "hashtext(current_database()))"))
        yield conn
        conn.commit()


def _create_at_head(conn: Connection) -> None:
    metadata().create_all(conn)
    if conn.execute(text("SELECT count(*) FROM wf_schema")).scalar_one() == 0:
        conn.execute(insert(SchemaRecord).values(id=1, version=SCHEMA_VERSION))
    migration_context(conn).stamp(scripts(), "head")


def _create_unmanaged(engine: Engine) -> None:
    """Tables in the metadata that migrations do not manage (a plugin's, a test's), created where missing."""
    tables = SQLModel.metadata.sorted_tables
    with engine.connect() as conn:
        existing = set(inspect(conn).get_table_names())
    missing = [t for t in tables if t.name not in existing and not managed(t.name)]
    if missing:
        with locked(engine) as conn:
            SQLModel.metadata.create_all(conn, tables=missing)


def ensure_current(engine: Engine) -> None:
    """What a service does at start: make an empty database at head, accept one at head, refuse any other."""
    with engine.connect() as conn:
        found = state(conn)
    if found.kind == "empty":
        with locked(engine) as conn:
            found = state(conn)  # another service may have made it while we waited for the lock
            if found.kind == "empty":
                _create_at_head(conn)
                found = SchemaState("current", head())
    if found.kind != "current":
        raise refusal(engine, found)
    _create_unmanaged(engine)


def upgrade(engine: Engine) -> tuple[SchemaState, SchemaState]:
    """Bring the database to head (what `weightflow db upgrade` does); returns where it was and where it is.

    A database from before migrations (table schema 2 or 3) is upgraded from the start: revisions 0001 and
    0002 create only what it lacks (the old releases made each table when its service first started)."""
    with locked(engine) as conn:
        before = state(conn)
        if before.kind == "empty":
            _create_at_head(conn)
        elif before.kind == "behind" or (before.kind == "legacy" and before.legacy_version in ADOPTABLE):
            command.upgrade(config(conn), "head")
        elif before.kind != "current":
            raise refusal(engine, before)
        after = state(conn)
    return before, after
