"""`/v1/files`: upload, list, retrieve, download and delete files.

Uploads are validated by the data pipeline when their purpose is `fine-tune`, off the request
path, as OpenAI's files were: the upload answers `uploaded` at once, and the file moves to
`processed`, or `error` with every problem and its line number in `status_details` (and the
report in `report`). Files are stored under their id, never the client's filename;
result files of jobs (`fine-tune-results`, the metrics CSV) are listed here too.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from tuneforge.jobs.errors import StoreError
from tuneforge.jobs.schemas import FileDeleted, FilePublic, ListPage
from tuneforge.jobs.store import new_id, write_upload
from tuneforge.server.deps import CurrentPrincipal, Settings
from tuneforge.server.errors import ERROR_RESPONSES
from tuneforge.server.jobs import JobsState, Store

router = APIRouter(
    prefix="/v1",
    tags=["files"],
    responses={s: ERROR_RESPONSES[s] for s in (400, 401, 404)},
)


@router.post("/files", responses={413: ERROR_RESPONSES[413]})
def upload_file(
    request: Request,
    store: Store,
    settings: Settings,
    principal: CurrentPrincipal,
    file: Annotated[UploadFile, File(description="The dataset (JSONL).")],
    purpose: Annotated[str, Form(description="Only 'fine-tune' is accepted.")],
) -> FilePublic:
    """Upload a training or validation file: `uploaded` now, `processed` or `error` once
    validated (retrieve it to see which)."""
    if purpose != "fine-tune":
        raise StoreError(
            f"purpose must be 'fine-tune' (got {purpose!r}); TuneForge stores training data.",
            param="purpose",
        )
    tmp = store.data_dir / "files" / f".upload-{new_id('u', 12)}"
    write_upload(file.file, tmp, settings.max_upload_bytes)
    row = store.add_file(
        principal.org_id, file.filename or "upload.jsonl", purpose, tmp, validate=False
    )
    jobs: JobsState = request.app.state.jobs
    jobs.validate_later(row.id)
    return FilePublic.of(row)


@router.get("/files")
def list_files(
    store: Store,
    principal: CurrentPrincipal,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> ListPage[FilePublic]:
    page = store.list_files(
        principal.org_id, purpose=purpose, after=after, limit=limit, order=order
    )
    return ListPage.of([FilePublic.of(f) for f in page.data], page.has_more)


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, store: Store, principal: CurrentPrincipal) -> FilePublic:
    return FilePublic.of(store.get_file(principal.org_id, file_id))


@router.get("/files/{file_id}/content", response_class=FileResponse)
def file_content(file_id: str, store: Store, principal: CurrentPrincipal) -> FileResponse:
    """The file's bytes, as uploaded (or as the job wrote them)."""
    row = store.get_file(principal.org_id, file_id)
    media = "text/csv" if row.filename.endswith(".csv") else "application/octet-stream"
    return FileResponse(store.file_path(row), media_type=media, filename=row.filename)


@router.delete("/files/{file_id}")
def delete_file(file_id: str, store: Store, principal: CurrentPrincipal) -> FileDeleted:
    store.delete_file(principal.org_id, file_id)
    return FileDeleted(id=file_id)
