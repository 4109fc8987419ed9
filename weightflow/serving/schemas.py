"""The HTTP API's requests and answers: OpenAI's shapes where OpenAI has one, and `/v1/classify`.

Clients written for OpenAI (its SDKs, vLLM/TGI/llama.cpp users) work unchanged for what weightflow serves.
Fields we do not implement are refused with a 400 naming them rather than silently ignored, except
those whose neutral value we send back anyway (n=1, penalties 0). Decoding is greedy unless
`temperature` > 0, so a request with no parameters gets the answers the evaluation measured.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from weightflow.contracts.limits import MAX_TEXT_CHARS

MAX_INPUTS = 256  # texts or prompts in one request
MAX_STOP = 4  # as OpenAI

def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode at character {exc.start} (a lone surrogate escape)") from None
    return text


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_unicode)]
Texts = Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `"temperature": false` is a mistake, not 0

    model: str = Field(min_length=1, max_length=200, description="the deployment name (see /v1/models)")
    user: str | None = Field(default=None, max_length=200)


def _texts(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else v


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = Field(default=False, description="a last chunk with the request's token usage")


class _Decoding(_Request):
    temperature: float = Field(default=0.0, ge=0.0, le=2.0,
                               description="0 (the default) decodes greedily; so does anything under 1e-5")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per prompt")
    stream: bool = Field(default=False, description="true: server-sent events, OpenAI's chunks, then [DONE]")
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=0.0, le=0.0, description="only 0 (no penalty) is served")
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=0.0, description="only 0 (no penalty) is served")

    def usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def stop_sequences(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)


class CompletionRequest(_Decoding):
    prompt: Text | Texts
    max_tokens: int | None = Field(default=None, ge=1, description="default: the deployment's max_new_tokens")

    def prompts(self) -> list[str]:
        return _texts(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | Annotated[list[TextPart], Field(max_length=MAX_INPUTS)]
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Decoding):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_INPUTS)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ends_with_user(self) -> ChatRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's")
        return self

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class EmbeddingRequest(_Request):
    input: Text | Texts
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: None = None

    def texts(self) -> list[str]:
        return _texts(self.input)


class ClassifyRequest(_Request):
    """weightflow's own: the label a classification deployment gives each input, with every label's
    probability (softmax of the scores it ranks labels by)."""

    input: Text | Texts

    def texts(self) -> list[str]:
        return _texts(self.input)


# -- answers ---------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class Classification(BaseModel):
    index: int
    label: str
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Classification]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "weightflow"
    manifest_id: str
    task: str
    endpoints: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error(message: str, type_: str = "invalid_request_error", *, param: str | None = None,
          code: str | None = None) -> dict[str, Any]:
    return ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code)).model_dump()
