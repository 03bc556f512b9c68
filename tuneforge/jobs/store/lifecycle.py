"""The client's side of a job: create (validated, idempotent, within quota), get, list,
cancel, pause, resume."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneforge.jobs.db import File, IdempotencyKey, Job
from tuneforge.jobs.errors import Conflict, InvalidRequest, NotFound
from tuneforge.jobs.limits import QuotaExceeded
from tuneforge.jobs.spec import (
    JobCreate,
    check_method,
    effective_hyperparameters,
    method_type,
    plan_training,
)
from tuneforge.jobs.store.base import ACTIVE, TERMINAL, held, new_id, now
from tuneforge.jobs.store.files import FileStore
from tuneforge.jobs.store.lease import release, set_terminal
from tuneforge.jobs.store.models import ModelStore
from tuneforge.jobs.store.paging import Page, after_cursor, clamp_limit


class JobLifecycle(FileStore, ModelStore):
    """Jobs as a client sees them (creating one needs its files and, for `ft:`, its model)."""

    def create_job(
        self,
        org_id: str,
        req: JobCreate,
        *,
        resolve_base: Callable[[str], str | None] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Validate and queue a job (status `queued` until a worker takes it).

        `resolve_base` maps a base model id to a folder or Hub id (the server's model
        registry); without it the id is used as given. An `ft:` id continues from that
        fine-tune. With `idempotency_key`, the same request again returns the first job;
        a different request under the same key raises `Conflict`.
        """
        request_hash = hashlib.sha256(
            json.dumps(req.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()
        if idempotency_key:
            existing = self._idempotent_job(org_id, idempotency_key, request_hash)
            if existing is not None:
                return existing
        check_method(req)
        self._admit_job(org_id)
        if req.integrations:
            raise InvalidRequest(
                "integrations are not supported: TuneForge logs every metric to the job's "
                "events, results file, metrics.jsonl and TensorBoard.",
                param="integrations",
            )
        train = self._training_file(org_id, req.training_file, "training_file")
        valid = (
            self._training_file(org_id, req.validation_file, "validation_file")
            if req.validation_file
            else None
        )
        parent_path = base_path = None
        if req.model.startswith("ft:"):
            parent = self.resolve_model(org_id, req.model)
            base_model, parent_path = parent.base_model, parent.path
        else:
            base_model = req.model
            base_path = resolve_base(req.model) if resolve_base else req.model
            if base_path is None:
                raise NotFound(
                    f"The model '{req.model}' does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
        pending = any(f is not None and f.status == "uploaded" for f in (train, valid))
        job_id = new_id("ftjob")
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1)
        overrides = plan_training(
            req,
            base_path=base_path,
            parent_path=parent_path,
            train_path=self.file_path(train),
            valid_path=self.file_path(valid) if valid else None,
            output_dir=self.job_dir(job_id) / "output",
            seed=seed,
            limits=self.limits,
        )
        hyper = effective_hyperparameters(req).model_dump()
        kind = method_type(req)
        settings: dict[str, Any] = {"hyperparameters": hyper}
        section = getattr(req.method, kind, None) if req.method else None
        if section is not None and section.tuneforge:
            settings["tuneforge"] = section.tuneforge
        job = Job(
            id=job_id,
            org_id=org_id,
            created_at=now(),
            # A file still being validated holds the job in `validating_files` (the worker that
            # claims it waits for the verdict); otherwise it waits for a worker as `queued`.
            status="validating_files" if pending else "queued",
            model=req.model,
            training_file=train.id,
            validation_file=valid.id if valid else None,
            suffix=req.suffix,
            seed=seed,
            metadata_=req.metadata,
            method={"type": kind, kind: settings},
            base_model=base_model,
            base_path=base_path or "",
            parent_model=req.model if parent_path else None,
            train_overrides=overrides,
            hyperparameters=hyper,
            result_files=[],
            last_step=0,
            attempts=0,
            version=0,
        )
        try:
            with self.session() as s:
                self._ensure_org(s, org_id)
                if idempotency_key:
                    s.add(
                        IdempotencyKey(
                            org_id=org_id,
                            key=idempotency_key,
                            request_hash=request_hash,
                            job_id=job_id,
                            created_at=now(),
                        )
                    )
                s.add(job)
                s.flush()
                self._event(s, job_id, "Created fine-tuning job: " + job_id)
                self._event(s, job_id, f"Validating training file: {train.id}")
                if not pending:
                    self._event(s, job_id, "Files validated, moving job to queued state")
        except IntegrityError:
            # A concurrent request with the same key won the race: answer with its job.
            if idempotency_key:
                existing = self._idempotent_job(org_id, idempotency_key, request_hash)
                if existing is not None:
                    return existing
            raise
        self.job_dir(job_id).mkdir(parents=True, exist_ok=True)
        return job

    def _admit_job(self, org_id: str) -> None:
        """Refuse a new job while `org_id` has `limits.max_active_jobs` jobs not yet done
        (validating, queued or running: all of them wait for or hold a worker).

        A check before the insert, not a lock: two requests at once may both pass, so the
        quota can be overshot by the number of concurrent creates, never by more.
        """
        most = self.limits.max_active_jobs
        with self.reading() as s:
            active = s.execute(
                select(func.count())
                .select_from(Job)
                .where(Job.org_id == org_id, Job.status.in_(ACTIVE))
            ).scalar_one()
        if active >= most:
            raise QuotaExceeded(
                f"This organization has {active} active fine-tuning jobs (validating, queued "
                f"or running), the most this server allows at once ({most}). Wait for one to "
                "finish, or cancel one, then create the job again.",
                code="rate_limit_exceeded",
            )

    def _idempotent_job(self, org_id: str, key: str, request_hash: str) -> Job | None:
        with self.session() as s:
            row = s.get(IdempotencyKey, (org_id, key))
            if row is None:
                return None
            if row.request_hash != request_hash:
                raise Conflict(
                    "This Idempotency-Key was already used with a different request.",
                    param="Idempotency-Key",
                    code="idempotency_key_reused",
                )
            return s.scalar(select(Job).where(Job.id == row.job_id))

    def _training_file(self, org_id: str, file_id: str, param: str) -> File:
        try:
            f = self.get_file(org_id, file_id)
        except NotFound:
            raise InvalidRequest(
                f"File {file_id} not found.", param=param, code="invalid_file"
            ) from None
        if f.purpose != "fine-tune":
            raise InvalidRequest(
                f"File {file_id} has purpose {f.purpose!r}; upload it with purpose 'fine-tune'.",
                param=param,
                code="invalid_file",
            )
        if f.status == "error":  # still `uploaded`: the job waits in validating_files
            raise InvalidRequest(
                f"File {file_id} failed validation: {f.status_details}",
                param=param,
                code="invalid_file",
            )
        return f

    def list_jobs(
        self,
        org_id: str | None,
        *,
        after: str | None = None,
        limit: int = 20,
        metadata: dict[str, str] | None = None,
        status: str | None = None,
    ) -> Page:
        """Jobs newest first; `metadata` keeps jobs whose metadata has every given pair."""
        q = select(Job)
        scope = [] if org_id is None else [Job.org_id == org_id]
        q = q.where(*scope)
        if status:
            q = q.where(Job.status == status)
        if not metadata:
            return self._page(q, Job, after, limit, "desc", *scope)
        # JSON filtering differs per database; metadata is small, so filter in Python.
        with self.reading() as s:
            q = after_cursor(s, q, Job, after, True, *scope)
            rows = [
                j
                for j in s.scalars(q.order_by(Job.seq.desc()))
                if all((j.metadata_ or {}).get(k) == v for k, v in metadata.items())
            ]
        limit = clamp_limit(limit)
        return Page(rows[:limit], len(rows) > limit)

    def cancel_job(self, org_id: str | None, job_id: str) -> Job:
        """Cancel: at once when no worker holds the job, else through the control flag (its
        worker stops training at the next optimizer step and records the cancellation)."""

        def change(s: Session, job: Job) -> None:
            if job.status == "cancelled" or (held(job) and job.control == "cancel"):
                return
            if job.status in ("succeeded", "failed"):
                raise InvalidRequest(
                    f"Job {job.id} has already finished ({job.status}).", param="id"
                )
            if held(job):
                job.control = "cancel"
                self._event(s, job.id, "Cancellation requested; stopping at the next step")
            else:
                set_terminal(job, "cancelled")
                self._event(s, job.id, "Fine-tuning job cancelled")

        return self._change_job(org_id, job_id, change)

    def pause_job(self, org_id: str | None, job_id: str) -> Job:
        """Pause: at once when no worker holds the job, else through the control flag (its
        worker checkpoints at the next optimizer step and stops); `resume_job` continues."""

        def change(s: Session, job: Job) -> None:
            if job.status == "paused" or (held(job) and job.control == "pause"):
                return
            if job.status in TERMINAL:
                raise InvalidRequest(
                    f"Job {job.id} has already finished ({job.status}).", param="id"
                )
            if job.control == "cancel":
                raise InvalidRequest(f"Job {job.id} is being cancelled.", param="id")
            if held(job):
                job.control = "pause"
                self._event(s, job.id, "Pause requested; checkpointing at the next step")
            else:
                # A dead worker's lease: it can write nothing more (every worker write is
                # guarded by worker_id), and a stalled one stops at its next heartbeat.
                job.status = "paused"
                release(job)
                self._event(s, job.id, "Fine-tuning job paused")

        return self._change_job(org_id, job_id, change)

    def resume_job(self, org_id: str | None, job_id: str) -> Job:
        """Resume a paused job: queued again, it continues from its last checkpoint."""

        def change(s: Session, job: Job) -> None:
            if job.status in TERMINAL:
                raise InvalidRequest(
                    f"Job {job.id} has already finished ({job.status}).", param="id"
                )
            if job.control == "pause":  # not yet acted on: just withdraw the request
                job.control = None
                self._event(s, job.id, "Pause request withdrawn")
            elif job.status == "paused":
                job.status = "queued"
                self._event(s, job.id, "Fine-tuning job resumed; queued to continue")

        return self._change_job(org_id, job_id, change)

    def _change_job(
        self, org_id: str | None, job_id: str, change: Callable[[Session, Job], None]
    ) -> Job:
        """Apply a client's `change` to the row, locked (PostgreSQL) or under SQLite's single
        writer, so it never interleaves with a claim or a worker's update."""
        self.get_job(org_id, job_id)
        with self.session() as s:
            q = select(Job).where(Job.id == job_id)
            if s.get_bind().dialect.name == "postgresql":
                q = q.with_for_update()
            job = s.scalars(q).one()  # get_job found it; jobs are never deleted
            change(s, job)
            job.version += 1
        return job

    def count_jobs(self, status: str | None = None) -> int:
        with self.reading() as s:
            q = select(func.count()).select_from(Job)
            if status:
                q = q.where(Job.status == status)
            return int(s.scalar(q) or 0)
