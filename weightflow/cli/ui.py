"""`weightflow ui`: the read-only web app over the event stream (runs, deployments, dead letters, halts, and each
run's page), on loopback unless told otherwise."""

from __future__ import annotations

import typer

from weightflow.cli.common import console, store
from weightflow.shared.settings import Settings


def ui(
    host: str = typer.Option("127.0.0.1", help="address to listen on; loopback unless you mean to share it"),
    port: int = typer.Option(8090, min=1, max=65535, help="port to listen on"),
) -> None:
    """A small read-only web app: runs, deployments (live manifest, last canary, halted or not), dead letters and
    halts, and each run's page, refreshed as events arrive. It reads the stream and never publishes."""
    import uvicorn

    from weightflow.ui import create_app

    settings = Settings()
    app = create_app(settings, read_text=lambda digest: store(settings).read_bytes(digest).decode())
    console.print(f"weightflow ui on http://{host}:{port}/ (read-only; Ctrl-C stops it)", markup=False, highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command()(ui)
