"""/healthz and /readyz: what a load balancer and an operator ask (never traced; /metrics is beside them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from weightflow.serving.state import serving_of

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    """The process is up; says whether it follows promotions and why it refused the last one."""
    serving = serving_of(request)
    live, batcher = serving.live, serving.batcher
    served = live.current
    return {"status": "ok", "deployment": live.deployment, "manifest_id": served.manifest_id if served else None,
            "following": live.following, "pinned": live.pinned is not None, "swaps": live.swaps,
            "last_error": live.last_error, "queued": batcher.queued, "batches": batcher.stats.batches,
            "inputs": batcher.stats.inputs, "mean_batch": round(batcher.stats.mean_batch, 2),
            "model_s": round(batcher.stats.model_s, 4)}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 once a verified model is loaded (route traffic here), 503 before."""
    served = serving_of(request).live.current
    if served is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ready", "manifest_id": served.manifest_id})
