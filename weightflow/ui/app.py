"""The UI's routes: GET only. Every failure is a generic page with an id to find the detail in the log; no
traceback ever reaches the browser."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import cache
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from jinja2 import ChoiceLoader, Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException

from weightflow.pages import PageOptions, deployment_scope, render_deployment_page, render_run_page, run_scope
from weightflow.pages.page import plotly_js
from weightflow.shared.settings import Settings
from weightflow.ui import views
from weightflow.ui.feed import EventFeed

log = logging.getLogger("weightflow.ui")
PLOTLY_URL = "/static/plotly.min.js"


@cache
def _env() -> Environment:
    loader = ChoiceLoader([PackageLoader("weightflow.ui"), PackageLoader("weightflow.pages")])  # pages' style
    return Environment(loader=loader, autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)


def _page(title: str, message: str, status: int) -> HTMLResponse:
    return HTMLResponse(_env().get_template("error.html.j2").render(title=title, message=message), status)


def create_app(settings: Settings, read_text: Callable[[str], str] | None = None) -> FastAPI:
    """The app over a feed of `settings`' event stream; `read_text` reads a stored text by digest (runbooks)."""
    feed = EventFeed(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        feed.start()
        try:
            yield
        finally:
            await feed.stop()

    app = FastAPI(title="weightflow", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.feed = feed
    options = PageOptions(plotly_src=PLOTLY_URL, read_text=read_text, refresh_url="/version", home_url="/")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        return _page("Not found" if exc.status_code == 404 else "Refused", str(exc.detail), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_address(request: Request, _: RequestValidationError) -> Response:
        # FastAPI's own answer is JSON echoing the input: the UI answers every bad address with its own page
        return _page("Not found", "There is no page at this address.", 404)

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> Response:
        ref = uuid.uuid4().hex[:12]
        log.error("error %s on %s", ref, request.url.path, exc_info=exc)
        return _page(
            "Something went wrong",
            f"This page could not be built (error {ref}; the detail is in the log of `weightflow ui`).",
            500,
        )

    def fragment() -> str:
        events = list(feed.events)
        return (
            _env()
            .get_template("fragment.html.j2")
            .render(
                runs=views.run_rows(events),
                deployments=views.deployment_rows(events),
                dead_letters=views.dead_letters(events),
                halts=views.halts(events),
                error=feed.error,
                count=len(events),
            )
        )

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return _env().get_template("index.html.j2").render(fragment=fragment())

    @app.get("/fragment", response_class=HTMLResponse)
    def index_fragment() -> str:
        return fragment()

    @app.get("/version", response_class=PlainTextResponse)
    def version() -> str:
        return feed.version

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: str) -> str:
        try:
            chosen = UUID(run_id)
        except ValueError:
            raise HTTPException(404, f"{run_id!r} is not a run id") from None
        picked, outcome = run_scope(list(feed.events), chosen)
        if not picked:
            raise HTTPException(404, f"no run {run_id} on the event stream")
        return render_run_page(chosen, picked, outcome, replace(options, refresh_url=f"/runs/{chosen}/version"))

    @app.get("/runs/{run_id}/version", response_class=PlainTextResponse)
    def run_version(run_id: UUID) -> str:
        """Changes when this run's page would: the page reloads then, not on every event of the stream."""
        picked, outcome = run_scope(list(feed.events), run_id)
        return f"{len(picked)}:{outcome}"

    @app.get("/deployments/{name}", response_class=HTMLResponse)
    def deployment_page(name: str) -> str:
        picked = deployment_scope(list(feed.events), name)
        if not picked:
            raise HTTPException(404, f"no deployment {name!r} on the event stream")
        return render_deployment_page(name, picked, options)

    @app.get(PLOTLY_URL)
    def plotly() -> Response:
        return Response(
            plotly_js(), media_type="application/javascript", headers={"Cache-Control": "public, max-age=86400"}
        )

    return app
