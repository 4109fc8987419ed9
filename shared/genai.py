"""OpenTelemetry's GenAI semantic conventions on weightflow's model spans, in one place.

Each model-work span (`task.evaluate`, `task.complete`, …; shared.modeling.protocols) gets the
attributes that apply, read from the call and its result, and every evaluation a `gen_ai.evaluation.result`
event; the mapping is documented in docs/telemetry.md. Never raises: a span attribute must not fail model work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.trace import Span

EVALUATION_RESULT = "gen_ai.evaluation.result"


def _model_attributes(args: Sequence[Any]) -> dict[str, Any]:
    target: Any = args[1] if len(args) > 1 else None  # (self, loaded | endpoint, ...)
    model_dir = getattr(target, "model_dir", None)
    if model_dir is not None:
        digest = getattr(model_dir, "name", str(model_dir))
        return {"gen_ai.request.model": f"tree:{digest[:12]}", "weightflow.model.tree_digest": digest}
    if hasattr(target, "base_url") and hasattr(target, "model"):
        from urllib.parse import urlsplit

        return {"gen_ai.request.model": str(target.model), "server.address": urlsplit(str(target.base_url)).hostname
                or ""}
    return {}


def evaluation_event(measurement: Any) -> dict[str, Any]:
    """The attributes of a `gen_ai.evaluation.result` event for a Measurement."""
    out = {"gen_ai.evaluation.name": str(measurement.metric), "gen_ai.evaluation.score.value": float(measurement.score),
           "weightflow.evaluation.rows": int(measurement.n)}
    if measurement.interval is not None:
        out |= {"weightflow.evaluation.interval.low": float(measurement.interval.low),
                "weightflow.evaluation.interval.high": float(measurement.interval.high)}
    return out


def usage_attributes(completions: Sequence[Any]) -> dict[str, Any]:
    return {"gen_ai.usage.input_tokens": sum(int(c.prompt_tokens) for c in completions),
            "gen_ai.usage.output_tokens": sum(int(c.completion_tokens) for c in completions),
            "gen_ai.response.finish_reasons": [str(c.finish_reason) for c in completions]}


def describe(span: Span, name: str, args: Sequence[Any], result: Any) -> None:
    """Set the conventions' attributes (and the evaluation event) on a finished model call's span."""
    if not span.is_recording() or not name.startswith("task."):
        return
    try:
        span.set_attributes(_model_attributes(args))
        method = name.removeprefix("task.")
        if method == "complete":
            span.set_attributes({"gen_ai.operation.name": "text_completion", **usage_attributes(result)})
        elif method == "embeddings":
            span.set_attribute("gen_ai.operation.name", "embeddings")
        elif method in ("evaluate", "evaluate_remote") and hasattr(result, "score"):
            span.set_attribute("weightflow.evaluation.rows", int(result.n))
            span.add_event(EVALUATION_RESULT, evaluation_event(result))
    except Exception:  # an unexpected result shape: the span goes without, the model's answer does not
        return


_OPERATIONS = {"CompletionResponse": "text_completion", "ChatResponse": "chat", "EmbeddingResponse": "embeddings",
               "ClassifyResponse": "classify"}


def response_attributes(body: Any, manifest_id: str) -> dict[str, Any]:
    """A served answer's attributes for its request's span: operation, model asked for and model that
    answered (the manifest), the answer's id, usage and finish reasons."""
    out: dict[str, Any] = {"gen_ai.response.model": manifest_id}
    operation = _OPERATIONS.get(type(body).__name__)
    if operation:
        out["gen_ai.operation.name"] = operation
    if getattr(body, "model", None):
        out["gen_ai.request.model"] = str(body.model)
    if getattr(body, "id", None):
        out["gen_ai.response.id"] = str(body.id)
    usage = getattr(body, "usage", None)
    if usage is not None:
        out["gen_ai.usage.input_tokens"] = int(usage.prompt_tokens)
        out["gen_ai.usage.output_tokens"] = int(getattr(usage, "completion_tokens", 0))
    reasons = [str(c.finish_reason) for c in getattr(body, "choices", None) or [] if hasattr(c, "finish_reason")]
    if reasons:
        out["gen_ai.response.finish_reasons"] = reasons
    return out
