"""`weightflow serve`'s HTTP API (FastAPI): the live model behind OpenAI's routes and /v1/classify.

Which routes answer depends on the deployment's task (`Task.serves`): classification deployments
classify and embed, language models complete and chat. Every error is a JSON body in OpenAI's shape
with a 4xx status that says what to change; only a fault of the server is a 500, and it never carries
a traceback. With WEIGHTFLOW_SERVE_API_KEY set, /v1 routes need `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast
from uuid import uuid4

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weightflow.serving import metrics
from weightflow.serving import schemas as s
from weightflow.serving.batching import Abandoned, Batcher, NotRunning
from weightflow.serving.live import LiveDeployment, ServedModel
from weightflow.serving.problems import problems
from weightflow.shared import genai
from weightflow.shared.modeling.protocols import CompletionParams, NotServed

log = logging.getLogger("weightflow.serve")

MAX_BODY_BYTES = 4 * 1024 * 1024
ROUTES = {"classify": ["/v1/classify"], "embeddings": ["/v1/embeddings"],
          "completions": ["/v1/completions", "/v1/chat/completions"]}
MANIFEST_HEADER = "x-weightflow-manifest"
# One server span per request (route, status, duration), none per dependency/endpoint/serialisation
# step: FastAPI's operation spans cost the model thread about a fifth of its speed under load (the CPU
# they take is taken from the model's cores, bench §8); health probes are not traced at all.
TELEMETRY: TelemetryConfig = {"operation_spans": False,
                              "exclude": lambda scope: scope.get("path") in ("/healthz", "/readyz", "/metrics")}
# With `stream: true` the 200 is server-sent events; in OpenAPI 3.1 a stream's schema describes one event.
STREAM_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"], "properties": {"data": {
        "type": "string", "description": "a chunk as JSON in OpenAI's streaming shape (the last choice chunk has "
                                         "finish_reason), an `error` object, or `[DONE]` at the end"}}}}}}}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.code, self.param, self.type = status, code, param, type_


@dataclass(frozen=True)
class Prompt:
    """A prompt in a batch, with where its text goes as it is generated (a streaming request) or None."""

    text: str
    sink: Callable[[str], None] | None = None


def _run_batch(live: LiveDeployment) -> Any:
    measured = [""]  # the manifest whose parameter bytes the gauge holds

    def run(key: Hashable, inputs: list[Any]) -> tuple[str, Sequence[Any]]:
        served = live.current  # one snapshot per batch: a swap takes effect at the next batch
        if served is None:
            raise ApiError(503, "no model is loaded yet", type_="server_error")
        if measured[0] != served.manifest_id:
            measured[0] = served.manifest_id
            size = metrics.parameter_bytes(getattr(served.loaded, "model", None))
            if size is not None:
                metrics.MODEL_BYTES.set(size)
        parts = cast(tuple[Any, ...], key)  # ("classify",) | ("embeddings",) | ("completions", params, templated)
        kind: str = parts[0]
        if kind not in served.task.serves:
            raise NotServed(f"the live model (task {served.spec.type}) no longer serves {kind}")
        metrics.BATCH_SIZE.labels(kind).observe(len(inputs))
        started = time.perf_counter()
        try:
            if kind == "classify":
                return served.manifest_id, served.task.classify(served.loaded, served.spec, inputs)
            if kind == "embeddings":
                return served.manifest_id, served.task.embeddings(served.loaded, served.spec, inputs)
            params, templated = parts[1], parts[2]
            prompts = cast(list[Prompt], inputs)
            sinks = [p.sink for p in prompts]
            first: list[float] = []

            def on_text(row: int, piece: str) -> None:
                if not first:
                    first.append(time.perf_counter())
                sink = sinks[row]
                if sink is not None:
                    sink(piece)

            completions = served.task.complete(
                served.loaded, served.spec, [p.text for p in prompts], params, templated=templated,
                on_text=on_text if any(sinks) else None)
            metrics.observe_generation(started, first[0] if first else None, completions)
            return served.manifest_id, completions
        finally:
            metrics.MODEL_SECONDS.labels(kind).observe(time.perf_counter() - started)

    return run


async def disconnected(receive: Receive) -> None:
    """Returns once the client has closed the connection. Only after the request's body was read: the
    next message is then the disconnect (uvicorn, ASGI spec 2.3). uvicorn tells only the newest request of
    a connection: an earlier pipelined one is answered to nobody rather than dropped."""
    while (await receive())["type"] != "http.disconnect":
        pass


def too_large() -> JSONResponse:
    # connection: close, or the server would go on reading (and dropping) the rest of the body
    return JSONResponse(s.error(f"request body over {MAX_BODY_BYTES // 2**20} MiB; send fewer or shorter inputs",
                                code="request_too_large"), status_code=413, headers={"connection": "close"})


class BodyLimit:
    """413 for a body over `limit`, in our JSON error shape: a declared Content-Length before anything
    reads it, every body as its bytes arrive (a chunked one before it is held in full). Not FastAPI's
    `max_body_size`: its responder replaces any answer to a declared oversize body with plain text.
    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware costs a task group
    and a streamed response per request (profiled)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await too_large()(scope, receive, send)
            return
        seen = 0  # counted whatever was declared: a server that frames the body otherwise is not trusted

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise StarletteHTTPException(413)  # answered by the app's handler, as JSON
            return message

        await self.app(scope, counted, send)


def create_app(live: LiveDeployment, *, max_batch: int = 8, max_wait_s: float = 0.002,
               api_key: str | None = None, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """The app; request spans go to `tracer_provider`, or to the process's (`setup_tracing`)."""
    batcher: Batcher[Any] = Batcher(_run_batch(live), max_batch=max_batch, max_wait_s=max_wait_s)

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
    app.state.batcher = batcher
    app.state.live = live

    # -- errors -------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(s.error(str(exc), exc.type, code=exc.code, param=exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        found = problems(exc.errors())  # each field named as the client wrote it, and what it must be
        message = "; ".join(f"{where}: {what}" for where, what in found[:5]) or "invalid request"
        param = found[0][0] if found and found[0][0] != "body" else None
        return JSONResponse(s.error(message, param=param, code="invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # a chunked body went past the limit (BodyLimit)
            return too_large()
        return JSONResponse(s.error(str(exc.detail), code="not_found" if exc.status_code == 404 else None),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid4().hex[:12]
        log.exception("request %s failed (ref %s)", request.url.path, ref)
        return JSONResponse(s.error(f"internal error (ref {ref}); the server log has the details", "server_error"),
                            status_code=500)

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(metrics.RequestMetrics, routes=lambda: {getattr(r, "path", "") for r in app.routes})
    metrics.QUEUED.set_function(lambda: batcher.queued)
    app.add_route("/metrics", metrics.metrics_endpoint, include_in_schema=False)

    # -- shared checks ------------------------------------------------------------------------
    async def authorized(request: Request) -> None:  # async: a sync dependency costs a threadpool hop
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                           code="invalid_api_key")

    def serving(model: str, kind: str) -> ServedModel:
        served = live.current
        if served is None:
            raise ApiError(503, "the model is still loading; retry shortly (see /readyz)", type_="server_error")
        if model not in (served.deployment, served.manifest_id):
            raise ApiError(404, f"model {model!r} is not served here; this server serves {served.deployment!r}",
                           code="model_not_found", param="model")
        if kind not in served.task.serves:
            offered = [r for k in sorted(served.task.serves) for r in ROUTES[k]]
            raise ApiError(404, f"deployment {served.deployment!r} (task {served.spec.type}) does not serve "
                           f"{ROUTES[kind][0]}; it serves {', '.join(offered)}", code="unsupported_endpoint")
        return served

    async def batched(key: tuple[Any, ...], items: list[Any], request: Request | None = None) -> tuple[str, list[Any]]:
        """The batch's answer; with `request`, a client that disconnects first takes its inputs out of
        the queue (a stream cancels its job instead, when Starlette sees the disconnect)."""
        try:
            return await batcher.submit(key, items, gone=None if request is None else
                                        lambda: disconnected(request.receive))
        except Abandoned as exc:  # nobody reads this answer: it is for the log and the request's span
            log.info("%s: the client closed the connection before its answer; its inputs were dropped",
                     request.url.path if request else "request")
            raise ApiError(499, "the client closed the request", code="client_closed_request") from exc
        except NotRunning as exc:
            raise ApiError(503, f"{exc}; retry shortly", type_="server_error") from exc
        except NotServed as exc:
            raise ApiError(404, str(exc), code="unsupported_endpoint") from exc
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc

    def streamed(key: tuple[Any, ...], texts: list[str], chunk: Callable[[int, str, str | None], dict[str, Any]],
                 opening: list[dict[str, Any]], usage: bool, head: dict[str, Any]) -> StreamingResponse:
        """Server-sent events in OpenAI's streaming shape: pieces as the model makes them, then each
        choice's rest and finish reason, the usage when asked for, and `data: [DONE]`. An error after
        the stream began is an `error` event (the status line is already sent)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({"gen_ai.operation.name": "chat" if head["object"].startswith("chat") else
                                 "text_completion", "gen_ai.request.model": str(head["model"]),
                                 "gen_ai.response.id": str(head["id"])})
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()

        def sink(i: int) -> Callable[[str], None]:
            def put(text: str) -> None:  # called on the model thread
                loop.call_soon_threadsafe(pieces.put_nowait, (i, text))

            return put

        # pieces are queued from the model thread before the batch's result is set, so the sentinel that
        # the result's callback queues comes after every piece
        job = asyncio.ensure_future(batched(key, [Prompt(t, sink(i)) for i, t in enumerate(texts)]))
        job.add_done_callback(lambda _: pieces.put_nowait(None))

        def event(body: dict[str, Any]) -> str:
            return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

        async def events() -> AsyncIterator[str]:
            sent = [""] * len(texts)
            try:
                for body in opening:
                    yield event(body)
                while (item := await pieces.get()) is not None:
                    i, text = item
                    sent[i] += text
                    yield event(chunk(i, text, None))
                try:
                    manifest_id, outs = job.result()
                except ApiError as exc:
                    yield event(s.error(str(exc), exc.type, param=exc.param, code=exc.code))
                    return
                except Exception:
                    ref = uuid4().hex[:12]
                    log.exception("streamed request failed (ref %s)", ref)
                    yield event(s.error(f"internal error (ref {ref}); the server log has the details",
                                        "server_error"))
                    return
                for i, out in enumerate(outs):
                    rest = out.text[len(sent[i]):] if out.text.startswith(sent[i]) else ""
                    if rest:
                        yield event(chunk(i, rest, None))
                    yield event(chunk(i, "", out.finish_reason) | {"system_fingerprint": manifest_id})
                if usage:
                    prompt_tokens = sum(o.prompt_tokens for o in outs)
                    completion_tokens = sum(o.completion_tokens for o in outs)
                    yield event({**head, "choices": [], "usage": {
                        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens}})
                yield "data: [DONE]\n\n"
            finally:
                if not job.done():  # the client went away: a queued job leaves the queue
                    job.cancel()
                elif not job.cancelled():
                    job.exception()  # read, or asyncio logs a failure nobody saw as never retrieved

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    def answer(body: BaseModel, manifest_id: str) -> Response:
        span = trace.get_current_span()
        if span.is_recording():  # sampled out, or no tracing: build nothing
            span.set_attributes(genai.response_attributes(body, manifest_id))
        # pydantic's own JSON encoder: one pass in Rust instead of model_dump() then json.dumps
        return Response(body.model_dump_json(), media_type="application/json", headers={MANIFEST_HEADER: manifest_id})

    def completion_params(req: s.CompletionRequest | s.ChatRequest, served: ServedModel, limit: int | None,
                          prompt_tokens: int) -> CompletionParams:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({"gen_ai.request.temperature": float(req.temperature or 0.0),
                                 **({"gen_ai.request.max_tokens": limit} if limit else {})})
        for name in ("max_tokens", "max_completion_tokens"):  # each one given must be possible on its own
            given = getattr(req, name, None)
            if given is not None and given >= served.context_tokens:
                raise ApiError(400, f"{name} {given} is past the {served.context_tokens} tokens per request (prompt + "
                               "completion) this deployment was fitted for", code="context_length_exceeded",
                               param=name)
        max_tokens = limit or served.spec.max_new_tokens
        if prompt_tokens + max_tokens > served.context_tokens:
            raise ApiError(400, f"this deployment was fitted for {served.context_tokens} tokens per request (prompt + "
                           f"completion); the prompt is {prompt_tokens} tokens and max_tokens {max_tokens}: shorten "
                           "the prompt or lower max_tokens", code="context_length_exceeded", param="max_tokens")
        return CompletionParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                stop=req.stop_sequences(), seed=req.seed)

    # -- the published schema: this deployment's routes, and the one model name it answers to -----
    schemas: dict[str | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        served = live.current
        key = served.manifest_id if served else None
        if key not in schemas:
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
            schemas.clear()
            schemas[key] = doc
        return schemas[key]

    app.openapi = openapi  # type: ignore[method-assign]

    # -- routes -------------------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, Any]:
        """The process is up; says whether it follows promotions and why it refused the last one."""
        served = live.current
        return {"status": "ok", "deployment": live.deployment, "manifest_id": served.manifest_id if served else None,
                "following": live.following, "pinned": live.pinned is not None, "swaps": live.swaps,
                "last_error": live.last_error, "queued": batcher.queued, "batches": batcher.stats.batches,
                "inputs": batcher.stats.inputs, "mean_batch": round(batcher.stats.mean_batch, 2),
                "model_s": round(batcher.stats.model_s, 4)}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        """200 once a verified model is loaded (route traffic here), 503 before."""
        served = live.current
        if served is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "manifest_id": served.manifest_id})

    @app.get("/v1/models", response_model=s.ModelList, tags=["openai"], dependencies=[Depends(authorized)])
    async def models() -> s.ModelList:
        served = live.current
        if served is None:
            return s.ModelList(data=[])
        created = int(time.mktime(time.strptime(served.manifest.created_at[:19], "%Y-%m-%dT%H:%M:%S")))
        return s.ModelList(data=[s.ModelCard(
            id=served.deployment, created=created, manifest_id=served.manifest_id, task=served.spec.type,
            endpoints=[r for k in sorted(served.task.serves) for r in ROUTES[k]])])

    @app.post("/v1/completions", response_model=s.CompletionResponse, tags=["openai"], responses=STREAM_DOC,
              dependencies=[Depends(authorized)])
    async def completions(req: s.CompletionRequest, request: Request) -> Response:
        """Continue each prompt as given (no template): OpenAI's legacy completions."""
        served = serving(req.model, "completions")
        prompts = req.prompts()
        counts = [served.task.count_tokens(served.front, p) for p in prompts]
        if min(counts) == 0:
            raise ApiError(400, f"prompt {counts.index(0)} has no tokens (this model adds no start token): send "
                           "some text", param="prompt")
        params = completion_params(req, served, req.max_tokens, max(counts))
        if req.stream:
            cid, created = f"cmpl-{uuid4().hex}", int(time.time())

            def piece(i: int, text: str, finish: str | None) -> dict[str, Any]:
                return {"id": cid, "object": "text_completion", "created": created, "model": served.deployment,
                        "choices": [{"index": i, "text": text, "finish_reason": finish, "logprobs": None}]}

            return streamed(("completions", params, False), prompts, piece, [], req.usage_chunk(),
                            {"id": cid, "object": "text_completion", "created": created, "model": served.deployment})
        manifest_id, outs = await batched(("completions", params, False), [Prompt(p) for p in prompts], request)
        usage = s.Usage(prompt_tokens=sum(o.prompt_tokens for o in outs),
                        completion_tokens=sum(o.completion_tokens for o in outs),
                        total_tokens=sum(o.prompt_tokens + o.completion_tokens for o in outs))
        return answer(s.CompletionResponse(
            id=f"cmpl-{uuid4().hex}", created=int(time.time()), model=served.deployment, usage=usage,
            choices=[s.CompletionChoice(index=i, text=o.text, finish_reason=o.finish_reason)
                     for i, o in enumerate(outs)]), manifest_id)

    @app.post("/v1/chat/completions", response_model=s.ChatResponse, tags=["openai"], responses=STREAM_DOC,
              dependencies=[Depends(authorized)])
    async def chat(req: s.ChatRequest, request: Request) -> Response:
        """One user message is the deployment's task input, rendered with its prompt as evaluated; a
        conversation uses the tokenizer's chat template."""
        served = serving(req.model, "completions")
        try:
            prompt, templated = served.task.chat_prompt(served.front, served.spec, req.conversation())
        except ValueError as exc:
            raise ApiError(400, str(exc), param="messages") from exc
        tokens = len(served.front.tokenizer(prompt, add_special_tokens=not templated)["input_ids"])
        if tokens == 0:
            raise ApiError(400, "the conversation renders to no tokens: send some text", param="messages")
        params = completion_params(req, served, req.limit(), tokens)
        if req.stream:
            cid, created = f"chatcmpl-{uuid4().hex}", int(time.time())
            head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served.deployment}

            def delta(i: int, text: str, finish: str | None) -> dict[str, Any]:
                return {**head, "choices": [{"index": i, "delta": {"content": text} if text else {},
                                             "finish_reason": finish, "logprobs": None}]}

            opening = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None, "logprobs": None}]}
            return streamed(("completions", params, templated), [prompt], delta, [opening], req.usage_chunk(), head)
        manifest_id, (out,) = await batched(("completions", params, templated), [Prompt(prompt)], request)
        return answer(s.ChatResponse(
            id=f"chatcmpl-{uuid4().hex}", created=int(time.time()), model=served.deployment,
            choices=[s.ChatChoice(index=0, message=s.AssistantMessage(content=out.text),
                                  finish_reason=out.finish_reason)],
            usage=s.Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                          total_tokens=out.prompt_tokens + out.completion_tokens)), manifest_id)

    @app.post("/v1/embeddings", response_model=s.EmbeddingResponse, tags=["openai"],
              dependencies=[Depends(authorized)])
    async def embeddings(req: s.EmbeddingRequest, request: Request) -> Response:
        """L2-normalised sentence embeddings (mean pooling), as the task embeds text."""
        served = serving(req.model, "embeddings")
        manifest_id, outs = await batched(("embeddings",), req.texts(), request)

        def encode(vector: list[float]) -> list[float] | str:
            if req.encoding_format == "base64":
                return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            return vector

        tokens = sum(o.tokens for o in outs)
        return answer(s.EmbeddingResponse(
            data=[s.EmbeddingItem(index=i, embedding=encode(o.vector)) for i, o in enumerate(outs)],
            model=served.deployment, usage=s.Usage(prompt_tokens=tokens, total_tokens=tokens)), manifest_id)

    @app.post("/v1/classify", response_model=s.ClassifyResponse, tags=["weightflow"],
              dependencies=[Depends(authorized)])
    async def classify(req: s.ClassifyRequest, request: Request) -> Response:
        """The label the deployment gives each input, and every label's probability."""
        served = serving(req.model, "classify")
        manifest_id, outs = await batched(("classify",), req.texts(), request)
        tokens = sum(o.tokens for o in outs)
        return answer(s.ClassifyResponse(
            data=[s.Classification(index=i, label=o.label, scores=o.scores) for i, o in enumerate(outs)],
            model=served.deployment, usage=s.Usage(prompt_tokens=tokens, total_tokens=tokens)), manifest_id)

    return app
