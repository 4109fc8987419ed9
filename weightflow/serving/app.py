"""`weightflow serve`'s HTTP API (FastAPI): the live model behind OpenAI's routes and /v1/classify.

Assembled here from its parts: the routers (`routes/`: operations, OpenAI's, weightflow's own), the state
they share (`state.Serving`: the live deployment, the batcher, the API key), errors in OpenAI's shape and the
body limit (`errors`), request metrics, and an OpenAPI document narrowed to what this deployment serves.
Which routes answer depends on the deployment's task (`Task.serves`). With WEIGHTFLOW_SERVE_API_KEY set,
/v1 routes need `Authorization: Bearer <key>`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from opentelemetry.trace import TracerProvider

from weightflow.serving import errors, metrics
from weightflow.serving import schemas as s
from weightflow.serving.batching import Batcher
from weightflow.serving.live import LiveDeployment
from weightflow.serving.routes import classify, openai, operations
from weightflow.serving.state import MANIFEST_HEADER, ROUTES, Serving
from weightflow.serving.work import batch_work

__all__ = ["MANIFEST_HEADER", "create_app"]

ROUTERS = (operations.router, openai.router, classify.router)

# One server span per request (route, status, duration), none per dependency/endpoint/serialisation
# step: FastAPI's operation spans cost the model thread about a fifth of its speed under load (the CPU
# they take is taken from the model's cores, bench §8); health probes are not traced at all.
TELEMETRY: TelemetryConfig = {"operation_spans": False,
                              "exclude": lambda scope: scope.get("path") in ("/healthz", "/readyz", "/metrics")}


def create_app(live: LiveDeployment, *, max_batch: int = 8, max_wait_s: float = 0.002,
               api_key: str | None = None, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """The app; request spans go to `tracer_provider`, or to the process's (`setup_tracing`)."""
    batcher: Batcher[Any] = Batcher(batch_work(live), max_batch=max_batch, max_wait_s=max_wait_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            await live.stop()

    app = FastAPI(title="weightflow serve", version="1", lifespan=lifespan,
                  telemetry=TELEMETRY | {"tracer_provider": tracer_provider},
                  description="The live model of one weightflow deployment, behind OpenAI-compatible routes.",
                  responses={400: {"model": s.ErrorResponse}, 401: {"model": s.ErrorResponse},
                             404: {"model": s.ErrorResponse}, 503: {"model": s.ErrorResponse}})
    app.state.serving = Serving(live, batcher, api_key)
    errors.install(app)
    # requests are counted by route; a path no route has counts as `other` (a scan cannot grow the label set)
    documents = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(metrics.RequestMetrics, routes=lambda: {"/metrics", *route_paths(), *filter(None, documents)})
    metrics.QUEUED.set_function(lambda: batcher.queued)
    app.add_route("/metrics", metrics.metrics_endpoint, include_in_schema=False)
    for router in ROUTERS:
        app.include_router(router)
    schemas: dict[str | None, dict[str, Any]] = {}  # the document of the manifest live when it was asked for
    app.openapi = lambda: deployment_openapi(app, live, schemas)  # type: ignore[method-assign]
    return app


def route_paths() -> set[str]:
    return {route.path for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)}


def deployment_openapi(app: FastAPI, live: LiveDeployment, cache: dict[str | None, dict[str, Any]]) -> dict[str, Any]:
    """The published schema: this deployment's routes and the one model name it answers to, with max_tokens
    bounded by the context it was fitted for. Built once per live manifest (kept in `cache`)."""
    served = live.current
    key = served.manifest_id if served else None
    if key not in cache:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if served is not None:
            offered = {r for k in served.task.serves for r in ROUTES[k]} | {"/v1/models"}
            doc["paths"] = {p: v for p, v in doc["paths"].items() if not p.startswith("/v1/") or p in offered}
            for component in doc.get("components", {}).get("schemas", {}).values():
                if "Request" not in component.get("title", ""):
                    continue
                properties = component.get("properties", {})
                if "model" in properties:
                    properties["model"]["enum"] = [served.deployment]
                for limit in ("max_tokens", "max_completion_tokens"):  # the fitted context, less a prompt token
                    for branch in properties.get(limit, {}).get("anyOf", []):
                        if branch.get("type") == "integer":
                            branch["maximum"] = served.context_tokens - 1
        cache.clear()
        cache[key] = doc
    return cache[key]
