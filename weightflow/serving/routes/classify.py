"""weightflow's own route: /v1/classify, the label a classification deployment gives each input."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from weightflow.serving import schemas as s
from weightflow.serving.state import answer, authorized, serving_of

router = APIRouter(tags=["weightflow"], dependencies=[Depends(authorized)])


@router.post("/v1/classify", response_model=s.ClassifyResponse)
async def classify(req: s.ClassifyRequest, request: Request) -> Response:
    """The label the deployment gives each input, and every label's probability."""
    serving = serving_of(request)
    served = serving.served(req.model, "classify")
    manifest_id, outs = await serving.batched(("classify",), req.texts(), request)
    tokens = sum(o.tokens for o in outs)
    return answer(s.ClassifyResponse(
        data=[s.Classification(index=i, label=o.label, scores=o.scores) for i, o in enumerate(outs)],
        model=served.deployment, usage=s.Usage(prompt_tokens=tokens, total_tokens=tokens)), manifest_id)
