"""The database's schema: where it stands, and upgrading it to this release's (Alembic, shared.migrations).

Services make a brand-new database themselves and refuse one that is behind: upgrading is an operator's act,
done once, while no service runs against the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from weightflow.cli.common import console, err
from weightflow.shared.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

app = typer.Typer(help="The database's schema: where it is (`current`), bring it to this release's (`upgrade`).",
                  no_args_is_help=True)


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    """The configured database; what stops a command is one line and an exit code, never a traceback (a database
    this release cannot use is a SchemaMismatchError: one of the CLI's refusals, exit 2, in `main`)."""
    from sqlalchemy.exc import OperationalError

    from weightflow.shared.db import make_engine

    engine = make_engine(settings.resolved_database_url())
    where = engine.url.render_as_string(hide_password=True)
    try:
        yield engine
    except OperationalError as exc:
        err.print(f"[red]error:[/] the database {escape(where)} did not answer: {escape(str(exc.orig))} (check "
                  "WEIGHTFLOW_DATABASE_URL)", highlight=False)
        raise typer.Exit(3) from None
    finally:
        engine.dispose()


@app.command()
def upgrade() -> None:
    """Upgrade the database (WEIGHTFLOW_DATABASE_URL, else the SQLite file in WEIGHTFLOW_HOME) to this release's
    schema; a database from before migrations too. Stop the services first; nothing stored is lost."""
    from weightflow.shared import migrations

    with _engine(Settings()) as engine:
        before, after = migrations.upgrade(engine)
        where = escape(migrations.where(engine))
    if before.kind == "current":
        console.print(f"{where} is at {after.describe()}: nothing to do", highlight=False)
    elif before.kind == "empty":
        console.print(f"created {where} at {after.describe()}", highlight=False)
    else:
        console.print(f"upgraded {where} from {before.describe()} to {after.describe()}", highlight=False)


@app.command()
def current() -> None:
    """Where the database stands: its schema revision; exit 1 when this release cannot use it as it is (then the
    line says what to run, e.g. `weightflow db upgrade`)."""
    from weightflow.shared import migrations

    settings = Settings()
    if settings.database_url is None and not (settings.home / "weightflow.db").exists():
        console.print(f"no database yet at {escape(str((settings.home / 'weightflow.db').resolve()))} (the first "
                      "service to start creates it)", highlight=False)
        return
    with _engine(settings) as engine, engine.connect() as conn:
        found = migrations.state(conn)
        where = escape(migrations.where(engine))
    if found.kind not in ("current", "empty"):
        console.print(escape(str(migrations.refusal(engine, found))), highlight=False)
        raise typer.Exit(1)
    console.print(f"{where}: {found.describe()}", highlight=False)
