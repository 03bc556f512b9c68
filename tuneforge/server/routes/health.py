"""`GET /health` (readiness) and `GET /metrics` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from tuneforge.server.auth import get_principal
from tuneforge.server.deps import EngineDep, MetricsDep
from tuneforge.server.errors import ERROR_RESPONSES
from tuneforge.server.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(engine: EngineDep) -> JSONResponse:
    """200 once the base model is loaded; 503 while loading or after a failed load."""
    if engine.ready:
        body = Health(status="ok", model=engine.base.id)
    else:
        status = "failed" if engine.failed else "loading"
        body = Health(status=status, model=engine.base.id, detail=engine.failed)
    return JSONResponse(body.model_dump(), status_code=200 if engine.ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(get_principal)],
    responses={401: ERROR_RESPONSES[401]},
)
def metrics(metrics: MetricsDep) -> PlainTextResponse:
    """Prometheus text: requests, errors, tokens, queue depth, TTFT and latency histograms."""
    return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")
