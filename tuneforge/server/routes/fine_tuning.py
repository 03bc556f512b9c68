"""`/v1/fine_tuning/jobs`: create, list, retrieve, cancel, pause and resume jobs; their
events and checkpoints.

Create accepts OpenAI's body (`JobCreate`) and an `Idempotency-Key` header: the same request
sent again with the same key returns the first job. `model` is a base model of the model
registry, or an `ft:` model of the caller's organization, which the job continues from.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request

from tuneforge.jobs.schemas import CheckpointPublic, EventPublic, JobPublic, ListPage
from tuneforge.jobs.spec import JobCreate
from tuneforge.server.deps import CurrentPrincipal, Registry
from tuneforge.server.errors import ERROR_RESPONSES
from tuneforge.server.jobs import Store

router = APIRouter(
    prefix="/v1/fine_tuning",
    tags=["fine-tuning"],
    responses={s: ERROR_RESPONSES[s] for s in (400, 401, 404)},
)


@router.post("/jobs", responses={429: ERROR_RESPONSES[429]})
def create_job(
    body: JobCreate,
    store: Store,
    registry: Registry,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic:
    """Create a fine-tuning job; a worker picks it up (status validating_files -> queued ->
    running -> succeeded / failed / cancelled). 429 `rate_limit_exceeded` while the
    organization has as many active jobs as the server allows (`org_max_active_jobs`)."""

    def resolve_base(model_id: str) -> str | None:
        entry = registry.resolve(model_id, principal.org_id)
        if entry is None or entry.kind != "full":
            return None
        return str(entry.path) if entry.path is not None else entry.hub_id

    job = store.create_job(
        principal.org_id, body, resolve_base=resolve_base, idempotency_key=idempotency_key
    )
    return JobPublic.of(job)


@router.get("/jobs")
def list_jobs(
    request: Request,
    store: Store,
    principal: CurrentPrincipal,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPage[JobPublic]:
    """Jobs, newest first. Filter by metadata with `metadata[key]=value` (repeatable)."""
    metadata = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    page = store.list_jobs(principal.org_id, after=after, limit=limit, metadata=metadata)
    return ListPage.of([JobPublic.of(j) for j in page.data], page.has_more)


@router.get("/jobs/{job_id}")
def retrieve_job(job_id: str, store: Store, principal: CurrentPrincipal) -> JobPublic:
    return JobPublic.of(store.get_job(principal.org_id, job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, store: Store, principal: CurrentPrincipal) -> JobPublic:
    """Cancel (idempotent). A running job stops at the end of its current step."""
    return JobPublic.of(store.cancel_job(principal.org_id, job_id))


@router.post("/jobs/{job_id}/pause")
def pause_job(job_id: str, store: Store, principal: CurrentPrincipal) -> JobPublic:
    """Pause (idempotent): the job checkpoints at the end of its current step and stops."""
    return JobPublic.of(store.pause_job(principal.org_id, job_id))


@router.post("/jobs/{job_id}/resume")
def resume_job(job_id: str, store: Store, principal: CurrentPrincipal) -> JobPublic:
    """Resume a paused job from its last checkpoint (idempotent)."""
    return JobPublic.of(store.resume_job(principal.org_id, job_id))


@router.get("/jobs/{job_id}/events")
def list_events(
    job_id: str,
    store: Store,
    principal: CurrentPrincipal,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> ListPage[EventPublic]:
    """Events, newest first: messages, and `metrics` events with per-step data."""
    page = store.list_events(principal.org_id, job_id, after=after, limit=limit)
    return ListPage.of([EventPublic.of(e) for e in page.data], page.has_more)


@router.get("/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    store: Store,
    principal: CurrentPrincipal,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ListPage[CheckpointPublic]:
    """Checkpoints, newest first; each `fine_tuned_model_checkpoint` id can be served."""
    page = store.list_checkpoints(principal.org_id, job_id, after=after, limit=limit)
    return ListPage.of([CheckpointPublic.of(c) for c in page.data], page.has_more)
