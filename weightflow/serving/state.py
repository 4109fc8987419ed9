"""What every route of one `weightflow serve` app shares: the live deployment, the batcher, the API key, and the
steps a request goes through (authorize, pick the served model, batch, answer or stream)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast
from uuid import uuid4

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from opentelemetry import trace
from pydantic import BaseModel
from starlette.types import Receive

from weightflow.serving import schemas as s
from weightflow.serving.batching import Abandoned, Batcher, NotRunning
from weightflow.serving.errors import ApiError
from weightflow.serving.live import LiveDeployment, ServedModel
from weightflow.serving.work import Prompt
from weightflow.shared import genai
from weightflow.shared.modeling.protocols import CompletionParams, NotServed

log = logging.getLogger("weightflow.serve")

ROUTES = {"classify": ["/v1/classify"], "embeddings": ["/v1/embeddings"],
          "completions": ["/v1/completions", "/v1/chat/completions"]}
MANIFEST_HEADER = "x-weightflow-manifest"


async def disconnected(receive: Receive) -> None:
    """Returns once the client has closed the connection. Only after the request's body was read: the
    next message is then the disconnect (uvicorn, ASGI spec 2.3). uvicorn tells only the newest request of
    a connection: an earlier pipelined one is answered to nobody rather than dropped."""
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class Serving:
    live: LiveDeployment
    batcher: Batcher[Any]
    api_key: str | None = None

    def served(self, model: str, kind: str) -> ServedModel:
        """The live model, if it answers to `model` and serves `kind`; else the error that says why not."""
        served = self.live.current
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

    async def batched(self, key: tuple[Any, ...], items: list[Any],
                      request: Request | None = None) -> tuple[str, list[Any]]:
        """The batch's answer; with `request`, a client that disconnects first takes its inputs out of
        the queue (a stream cancels its job instead, when Starlette sees the disconnect)."""
        try:
            return await self.batcher.submit(key, items, gone=None if request is None else
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

    def streamed(self, key: tuple[Any, ...], texts: list[str],
                 chunk: Callable[[int, str, str | None], dict[str, Any]], opening: list[dict[str, Any]],
                 usage: bool, head: dict[str, Any]) -> StreamingResponse:
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
        job = asyncio.ensure_future(self.batched(key, [Prompt(t, sink(i)) for i, t in enumerate(texts)]))
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


def serving_of(request: Request) -> Serving:
    return cast(Serving, request.app.state.serving)


async def authorized(request: Request) -> None:  # async: a sync dependency costs a threadpool hop
    """With WEIGHTFLOW_SERVE_API_KEY set, /v1 routes need `Authorization: Bearer <key>`."""
    api_key = serving_of(request).api_key
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`", code="invalid_api_key")


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
