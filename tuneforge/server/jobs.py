"""The fine-tuning job store inside the server: opening it, its model source, the worker.

`install(app)` (a startup hook of `create_app`) puts a `JobsState` on `app.state.jobs`:
the `JobStore` is opened lazily, on the first fine-tuning request (so an inference-only
server never creates a database), and fine-tuned models and checkpoints are plugged into the
model registry as a source, so they are listed in `/v1/models` and served by id. With
`settings.worker` (what `tuneforge serve` sets unless `--no-worker`), a `Worker` runs jobs in
a background thread of the server process.

Routes reach the store through the typed dependency `Store`.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from tuneforge.data.io import ReadLimits
from tuneforge.inference.registry import ModelEntry, NotDeletable
from tuneforge.jobs.errors import StoreError
from tuneforge.jobs.limits import JobLimits
from tuneforge.jobs.store import JobStore
from tuneforge.jobs.worker import Worker

log = logging.getLogger("tuneforge.server")


class JobsState:
    """The store (opened on first use), and the in-process worker if any."""

    def __init__(
        self,
        data_dir: Path,
        url: str | None = None,
        limits: JobLimits | None = None,
        *,
        upload_limits: ReadLimits | None = None,
        validation_workers: int = 2,
    ):
        self.data_dir = Path(data_dir)
        self.url = url
        self.limits = limits or JobLimits()
        self._store: JobStore | None = None
        self._lock = threading.Lock()
        self.worker: Worker | None = None
        # Uploads are validated here, off the request path; a bounded pool, so a burst of
        # uploads queues instead of parsing all at once.
        self.upload_limits = upload_limits
        self._validation = ThreadPoolExecutor(validation_workers, "tuneforge-validate")

    @property
    def opened(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> JobStore:
        with self._lock:
            if self._store is None:
                self._store = JobStore.open(self.data_dir, self.url)
                self._store.limits = self.limits  # the caps jobs are planned and admitted by
            return self._store

    def exists(self) -> bool:
        """Whether a store was ever created here (listing models must not create one)."""
        return (
            self._store is not None
            or self.url is not None
            or (self.data_dir / "tuneforge.db").is_file()
        )

    # -- the registry's model source ---------------------------------------------------------
    def list_models(self) -> list[ModelEntry]:
        if not self.exists():
            return []
        out = []
        for m in self.store.list_models(None):
            out.append(
                ModelEntry(
                    id=m.id,
                    path=Path(m.path),
                    owned_by=m.org,
                    org=m.org,
                    created=m.created,
                )
            )
        return out

    def resolve_model(self, model_id: str) -> ModelEntry | None:
        """One indexed lookup (the registry calls this on every inference request)."""
        if not self.exists():
            return None
        try:
            m = self.store.resolve_model(None, model_id)
        except StoreError:
            return None
        return ModelEntry(id=m.id, path=Path(m.path), owned_by=m.org, org=m.org, created=m.created)

    def delete_model(self, model_id: str) -> bool:
        """Delete a fine-tune with its files and checkpoints (a checkpoint alone: no)."""
        try:
            m = self.store.resolve_model(None, model_id)
        except StoreError:
            return False
        if m.kind != "fine-tune":  # it goes with its fine-tune
            raise NotDeletable(f"checkpoint {model_id!r} is deleted with its fine-tuned model")
        self.store.delete_model(m.org, model_id)  # Conflict while a job starts from it
        return True

    def validate_later(self, file_id: str) -> None:
        """Queue an `uploaded` file for validation (it moves to `processed` or `error`)."""
        self._validation.submit(self._validate, file_id)

    def _validate(self, file_id: str) -> None:
        try:
            self.store.process_file(file_id, self.upload_limits)
        except Exception:  # the file stays `uploaded`; the next start or a worker retries
            log.exception("validating file %s failed", file_id)

    def close(self) -> None:
        self._validation.shutdown(wait=False, cancel_futures=True)
        if self.worker is not None:
            self.worker.stop(timeout=self.worker.stop_grace_s + 10)
        if self._store is not None:
            self._store.close()


def install(app: FastAPI) -> None:
    """Startup hook: job state on `app.state.jobs`, fine-tunes in the registry, the worker."""
    settings = app.state.settings
    state = JobsState(
        settings.data_dir,
        settings.database_url,
        settings.job_limits(),
        upload_limits=settings.upload_limits(),
        validation_workers=settings.upload_validation_workers,
    )
    app.state.jobs = state
    if state.exists():  # files a stopped server had not validated yet
        for file_id in state.store.unprocessed_files():
            state.validate_later(file_id)
    app.state.registry.add_source(state, root=Path(settings.data_dir).resolve())
    if settings.worker:
        state.worker = Worker(
            state.store, lease_s=settings.worker_lease_s, max_wall_s=state.limits.max_wall_s
        )
        state.worker.start_thread()
        log.info("job worker %s started", state.worker.worker_id)


def uninstall(app: FastAPI) -> None:
    """Shutdown hook: stop the worker (its job is re-queued) and close the store."""
    state = getattr(app.state, "jobs", None)
    if state is not None:
        state.close()


def get_store(request: Request) -> JobStore:
    state: JobsState | None = getattr(request.app.state, "jobs", None)
    if state is None:  # an app built without its startup hooks (e.g. no lifespan)
        install(request.app)
        state = request.app.state.jobs
    return state.store


Store = Annotated[JobStore, Depends(get_store)]
