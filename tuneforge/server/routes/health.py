"""`GET /health` (readiness) and `GET /metrics` (Prometheus text).

`/health` answers anyone (load balancers probe it without a key), so it says only whether
the server is ready: no model id, no reason for a failed load (that names folders and
exceptions; it is in the server log).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from tuneforge.server.auth import get_principal
from tuneforge.server.deps import EngineDep, MetricsDep
from tuneforge.server.errors import ERROR_RESPONSES
from tuneforge.server.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    """`/health`: ok (ready), loading, or failed (the reason is in the server log)."""

    status: Literal["ok", "loading", "failed"]


@router.get("/health", response_model=Readiness, responses={503: {"model": Readiness}})
def health(engine: EngineDep) -> JSONResponse:
    """200 once the base model is loaded; 503 while loading or after a failed load."""
    status = "ok" if engine.ready else "failed" if engine.failed else "loading"
    body = Readiness(status=status)
    return JSONResponse(body.model_dump(), status_code=200 if engine.ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(get_principal)],
    responses={401: ERROR_RESPONSES[401]},
)
def metrics(metrics: MetricsDep) -> PlainTextResponse:
    """Prometheus text: requests, errors, tokens, queue depth, TTFT and latency histograms."""
    return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)
