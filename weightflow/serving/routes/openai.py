"""OpenAI's routes: models, completions, chat completions, embeddings (which of them answer depends on the
deployment's task, `Task.serves`)."""

from __future__ import annotations

import base64
import time
from typing import Any
from uuid import uuid4

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from weightflow.serving import schemas as s
from weightflow.serving.errors import ApiError
from weightflow.serving.state import ROUTES, answer, authorized, completion_params, serving_of
from weightflow.serving.work import Prompt

# With `stream: true` the 200 is server-sent events; in OpenAPI 3.1 a stream's schema describes one event.
STREAM_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"], "properties": {"data": {
        "type": "string", "description": "a chunk as JSON in OpenAI's streaming shape (the last choice chunk has "
                                         "finish_reason), an `error` object, or `[DONE]` at the end"}}}}}}}

router = APIRouter(tags=["openai"], dependencies=[Depends(authorized)])


@router.get("/v1/models", response_model=s.ModelList)
async def models(request: Request) -> s.ModelList:
    served = serving_of(request).live.current
    if served is None:
        return s.ModelList(data=[])
    created = int(time.mktime(time.strptime(served.manifest.created_at[:19], "%Y-%m-%dT%H:%M:%S")))
    return s.ModelList(data=[s.ModelCard(
        id=served.deployment, created=created, manifest_id=served.manifest_id, task=served.spec.type,
        endpoints=[r for k in sorted(served.task.serves) for r in ROUTES[k]])])


@router.post("/v1/completions", response_model=s.CompletionResponse, responses=STREAM_DOC)
async def completions(req: s.CompletionRequest, request: Request) -> Response:
    """Continue each prompt as given (no template): OpenAI's legacy completions."""
    serving = serving_of(request)
    served = serving.served(req.model, "completions")
    prompts = req.prompts()
    counts = [served.task.runtime().count_tokens(served.front, p) for p in prompts]
    if min(counts) == 0:
        raise ApiError(400, f"prompt {counts.index(0)} has no tokens (this model adds no start token): send "
                       "some text", param="prompt")
    params = completion_params(req, served, req.max_tokens, max(counts))
    if req.stream:
        cid, created = f"cmpl-{uuid4().hex}", int(time.time())

        def piece(i: int, text: str, finish: str | None) -> dict[str, Any]:
            return {"id": cid, "object": "text_completion", "created": created, "model": served.deployment,
                    "choices": [{"index": i, "text": text, "finish_reason": finish, "logprobs": None}]}

        return serving.streamed(("completions", params, False), prompts, piece, [], req.usage_chunk(),
                                {"id": cid, "object": "text_completion", "created": created,
                                 "model": served.deployment})
    manifest_id, outs = await serving.batched(("completions", params, False), [Prompt(p) for p in prompts], request)
    usage = s.Usage(prompt_tokens=sum(o.prompt_tokens for o in outs),
                    completion_tokens=sum(o.completion_tokens for o in outs),
                    total_tokens=sum(o.prompt_tokens + o.completion_tokens for o in outs))
    return answer(s.CompletionResponse(
        id=f"cmpl-{uuid4().hex}", created=int(time.time()), model=served.deployment, usage=usage,
        choices=[s.CompletionChoice(index=i, text=o.text, finish_reason=o.finish_reason)
                 for i, o in enumerate(outs)]), manifest_id)


@router.post("/v1/chat/completions", response_model=s.ChatResponse, responses=STREAM_DOC)
async def chat(req: s.ChatRequest, request: Request) -> Response:
    """One user message is the deployment's task input, rendered with its prompt as evaluated; a
    conversation uses the tokenizer's chat template."""
    serving = serving_of(request)
    served = serving.served(req.model, "completions")
    try:
        prompt, templated = served.task.runtime().chat_prompt(served.front, served.spec, req.conversation())
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
        return serving.streamed(("completions", params, templated), [prompt], delta, [opening], req.usage_chunk(),
                                head)
    manifest_id, (out,) = await serving.batched(("completions", params, templated), [Prompt(prompt)], request)
    return answer(s.ChatResponse(
        id=f"chatcmpl-{uuid4().hex}", created=int(time.time()), model=served.deployment,
        choices=[s.ChatChoice(index=0, message=s.AssistantMessage(content=out.text),
                              finish_reason=out.finish_reason)],
        usage=s.Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                      total_tokens=out.prompt_tokens + out.completion_tokens)), manifest_id)


@router.post("/v1/embeddings", response_model=s.EmbeddingResponse)
async def embeddings(req: s.EmbeddingRequest, request: Request) -> Response:
    """L2-normalised sentence embeddings (mean pooling), as the task embeds text."""
    serving = serving_of(request)
    served = serving.served(req.model, "embeddings")
    manifest_id, outs = await serving.batched(("embeddings",), req.texts(), request)

    def encode(vector: list[float]) -> list[float] | str:
        if req.encoding_format == "base64":
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        return vector

    tokens = sum(o.tokens for o in outs)
    return answer(s.EmbeddingResponse(
        data=[s.EmbeddingItem(index=i, embedding=encode(o.vector)) for i, o in enumerate(outs)],
        model=served.deployment, usage=s.Usage(prompt_tokens=tokens, total_tokens=tokens)), manifest_id)
