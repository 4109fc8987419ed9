"""Schema migrations on SQLite and PostgreSQL: a database made by the previous release, with rows in every table,
is refused by the services with the command that upgrades it, upgraded through the real CLI, and keeps every row;
the revisions build exactly what the models describe; services starting together make a fresh database once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import ReflectedColumn
from sqlmodel import Session, select

from weightflow.shared import migrations
from weightflow.shared.db import (
    SCHEMA_VERSION,
    EffectRecord,
    OutboxRecord,
    SchemaMismatchError,
    create_tables,
    make_engine,
)
from weightflow.shared.settings import REFUSED_TO_START_EXIT

from ..conftest import ROOT, postgres_database


def cli(url: str, *args: str) -> tuple[int, str]:
    """The real `weightflow` against the database at `url`: its exit code and all it said, on one line."""
    env = dict(os.environ, WEIGHTFLOW_DATABASE_URL=url, WEIGHTFLOW_NATS_URL="nats://127.0.0.1:9", COLUMNS="250")
    proc = subprocess.run([sys.executable, "-m", "weightflow.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def at_revision(url: str, revision: str, *, before_migrations: bool = False) -> Engine:
    """A database at `revision`; `before_migrations`: as the release before migrations left it (revision 0001's
    tables and `wf_schema` row 2, and no revision record: that release had none)."""
    engine = make_engine(url)
    with migrations.locked(engine) as conn:
        command.upgrade(migrations.config(conn), revision)
        if before_migrations:
            conn.execute(sa.text(f"DROP TABLE {migrations.VERSION_TABLE}"))
    return engine


def value(column: ReflectedColumn, k: int) -> Any:
    """A value of the column's type for row k; the second row leaves nullable columns empty."""
    type_, name = column["type"], column["name"]
    if column["nullable"] and k == 2:
        return None
    if isinstance(type_, sa.Boolean):
        return k % 2 == 1
    if isinstance(type_, sa.Integer):
        return 1000 + k
    if isinstance(type_, sa.Float):
        return k + 0.25
    if isinstance(type_, sa.DateTime):
        return datetime(2026, 12, 1, 12, 30, tzinfo=UTC) + timedelta(days=k, microseconds=k)
    if isinstance(type_, sa.LargeBinary):
        return bytes([0, 255, k]) + f'{{"event": {k}}}'.encode()
    return f"{name}-{k}-é"


def data_tables(engine: Engine) -> dict[str, list[str]]:
    """Our tables that hold data (all but the schema record), with their columns."""
    with engine.connect() as conn:
        found = sa.inspect(conn)
        return {name: [c["name"] for c in found.get_columns(name)] for name in found.get_table_names()
                if migrations.managed(name) and name != "wf_schema"}


def fill(engine: Engine) -> None:
    """Two rows in every table of ours (bus and services alike), every column set in one of them."""
    with engine.begin() as conn:
        for name in data_tables(engine):
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            conn.execute(table.insert(), [{c["name"]: value(c, k) for c in sa.inspect(conn).get_columns(name)}
                                          for k in (1, 2)])


def rows(engine: Engine, tables: dict[str, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of these tables, these columns only, in a stable order."""
    out = {}
    with engine.connect() as conn:
        for name, columns in tables.items():
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            picked = [table.c[c] for c in columns]
            out[name] = [tuple(r) for r in conn.execute(sa.select(*picked).order_by(*picked))]
    return out


def shape(engine: Engine) -> dict[str, dict[str, Any]]:
    """Our tables as the database describes them: columns (type, null, default), keys, indexes, unique sets."""
    with engine.connect() as conn:
        found = sa.inspect(conn)
        return {name: {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in found.get_columns(name)],
            "primary key": found.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in found.get_indexes(name)),
            "unique": sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(name)),
        } for name in sorted(found.get_table_names()) if migrations.managed(name)}


def fresh_shape(url: str) -> dict[str, dict[str, Any]]:
    """What a service makes of an empty database, by the backend of `url`, in a database of its own."""
    if url.startswith("sqlite"):
        engine = make_engine(url.replace(".db", "-fresh.db"))
        create_tables(engine)
        return shape(engine)
    with postgres_database() as other:
        engine = make_engine(other)
        create_tables(engine)
        try:
            return shape(engine)
        finally:
            engine.dispose()


@pytest.mark.parametrize("made_by", ["release before migrations", "revision 0001"])
def test_a_database_of_the_previous_schema_is_refused_then_upgraded_losing_nothing(database_url: str,
                                                                                  made_by: str) -> None:
    before_migrations = made_by == "release before migrations"
    engine = at_revision(database_url, "0001", before_migrations=before_migrations)
    fill(engine)
    old_columns = data_tables(engine)
    kept = rows(engine, old_columns)
    assert kept["wf_outbox"] and kept["wf_inbox"] and kept["wf_dead_letters"] and kept["requirements_versions"]

    # Services refuse it and say what to run: in-process, and as the real service process (exit 78, one line).
    with pytest.raises(SchemaMismatchError, match="run `weightflow db upgrade`"):
        create_tables(engine)
    if before_migrations:
        code, said = cli(database_url, "service", "requirements")
        assert code == REFUSED_TO_START_EXIT, said[-3000:]
        assert "run `weightflow db upgrade`" in said and "Traceback" not in said, said[-3000:]
        code, said = cli(database_url, "db", "current")
        assert code == 1 and "table schema 2, from before migrations" in said and "weightflow db upgrade" in said, said

    code, said = cli(database_url, "db", "upgrade")
    was = "table schema 2, from before migrations" if before_migrations else "revision 0001"
    assert code == 0 and f"from {was} to revision {migrations.head()} (head)" in said, said

    assert rows(engine, old_columns) == kept, "every row of every table is still there, unchanged"
    assert shape(engine) == fresh_shape(database_url), "the upgraded schema is the one a fresh database gets"
    create_tables(engine)  # services accept it now
    with Session(engine) as session:  # the new column and the new table work
        assert all(r.trace_context is None for r in session.exec(select(OutboxRecord)))
        session.add(OutboxRecord(event_id="e-new", service="registry", subject="wf.x", payload=b"{}",
                                 trace_context="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        session.add(EffectRecord(service="registry", key="register:run-1", event_id="e-new", run_id="run-1"))
        session.commit()
        assert session.get(EffectRecord, ("registry", "register:run-1")) is not None
        assert session.exec(select(OutboxRecord).where(OutboxRecord.event_id == "e-new")).one().trace_context
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM wf_schema")).scalar_one() == SCHEMA_VERSION
    if before_migrations:  # again: nothing to do (the CLI's word for it is checked once, in the other case)
        assert migrations.upgrade(engine)[0].kind == "current"
    else:
        code, said = cli(database_url, "db", "upgrade")
        assert code == 0 and "nothing to do" in said, said
    engine.dispose()


def test_the_revisions_build_what_the_models_describe(database_url: str) -> None:
    """A new database is made from the models; an upgraded one by the revisions: they must be the same, or a
    table was changed without a revision. Downgrades undo them."""
    engine = make_engine(database_url)
    with migrations.locked(engine) as conn:
        command.upgrade(migrations.config(conn), "head")
    models = sa.MetaData()  # ours, and a plugin's table that migrations leave alone
    for table in migrations.metadata().sorted_tables:
        table.to_metadata(models)
    sa.Table("plugin_things", models, sa.Column("id", sa.Integer, primary_key=True))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "version_table": migrations.VERSION_TABLE,
            "include_object": lambda _, name, kind, *__: kind != "table" or migrations.managed(name)})
        assert compare_metadata(context, models) == [], "a model changed without a revision"
    made = shape(engine)
    assert made == fresh_shape(database_url)
    with migrations.locked(engine) as conn:
        command.downgrade(migrations.config(conn), "0001")
    before, after = migrations.upgrade(engine)
    assert (before.kind, before.revision, after.kind) == ("behind", "0001", "current")
    assert shape(engine) == made
    with migrations.locked(engine) as conn:
        command.downgrade(migrations.config(conn), "base")
    assert shape(engine) == {}
    engine.dispose()


def test_services_starting_together_on_a_fresh_database_make_it_once(database_url: str) -> None:
    """Six services start at once on an empty database: one makes it, the others wait and find it made. The
    database is shared with another application that Alembic manages too: its tables and revision are its own."""
    engines = [make_engine(database_url) for _ in range(6)]
    with engines[0].begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('theirs1')"))
        conn.execute(sa.text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def service(engine: Engine) -> None:
        try:
            start.wait()
            create_tables(engine)
        except BaseException as exc:  # every failure, reported below
            errors.append(exc)

    threads = [threading.Thread(target=service, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    with engines[0].connect() as conn:
        assert [tuple(r) for r in conn.execute(sa.text(f"SELECT version_num FROM {migrations.VERSION_TABLE}"))] == \
            [(migrations.head(),)]
        assert [tuple(r) for r in conn.execute(sa.text("SELECT id, version FROM wf_schema"))] == [(1, SCHEMA_VERSION)]
        assert [tuple(r) for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))] == [("theirs1",)]
    assert shape(engines[0]) == fresh_shape(database_url)
    for engine in engines:
        engine.dispose()


def test_a_database_this_release_cannot_upgrade_is_refused_with_what_to_do(database_url: str) -> None:
    newer = at_revision(database_url, "head")
    with newer.begin() as conn:
        conn.execute(sa.text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(SchemaMismatchError, match="upgraded by a newer release"):
        create_tables(newer)
    code, said = cli(database_url, "db", "upgrade")
    assert code == 2 and "upgraded by a newer release" in said and "Traceback" not in said, said
    with newer.begin() as conn:  # a database from long before migrations (table schema 1)
        conn.execute(sa.text(f"DROP TABLE {migrations.VERSION_TABLE}"))
        conn.execute(sa.text("UPDATE wf_schema SET version = 1"))
    with pytest.raises(SchemaMismatchError, match="start with a fresh WEIGHTFLOW_HOME"):
        migrations.upgrade(newer)
    newer.dispose()
