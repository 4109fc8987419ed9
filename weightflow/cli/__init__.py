"""The `weightflow` command: run the stack or one service, submit work, look at what happened, operate it.

One module per concern: `workflow` (up, service, demo, submit, change, resume), `inspect` (status,
runs, events, report), `samples` (each evaluated row), `deployments` (registry, runbook, rollback, canary,
predict), `approval` (approve, reject), `dlq`, `ops` (doctor, nats-config), `ui` (the read-only web app).
"""

from __future__ import annotations

import os

import typer
from rich.markup import escape

from weightflow.cli import approval, db, deployments, dlq, inspect, ops, samples, ui, workflow
from weightflow.cli.common import err, refusal

app = typer.Typer(help="weightflow: select, fit, tune, register and watch a model as an event-driven workflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
for module in (workflow, inspect, samples, deployments, approval, ops, ui):
    module.register(app)
app.add_typer(deployments.registry_app, name="registry")
app.add_typer(dlq.app, name="dlq")
app.add_typer(db.app, name="db")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except Exception as exc:  # one place: a refusal of the user's input is exit 2 and one line, never a traceback
        message = refusal(exc)
        if message is None:
            raise
        err.print(f"[red]error:[/] {escape(message)}", highlight=False)
        raise SystemExit(2) from None
