"""`JobStore`: files, fine-tuning jobs, their events and checkpoints, and fine-tuned models.

Everything a client can see is scoped by organization: a getter given another
organization's id raises `NotFound`, exactly as for an id that never existed. The worker's
side (claiming, heartbeats, progress, outcomes) is guarded by the lease: a worker that lost
its lease cannot write a job's state any more.

Example:
    >>> store = JobStore.open("tuneforge-data")
    >>> f = store.add_file("org-a", "train.jsonl", "fine-tune", Path("upload.tmp"))
    >>> job = store.create_job("org-a", JobCreate(model="tiny", training_file=f.id))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.data.io import ReadLimits
from tuneforge.fsutil import fsync_dir
from tuneforge.jobs import db
from tuneforge.jobs.db import File, IdempotencyKey, Job, JobCheckpoint, JobEvent, Model
from tuneforge.jobs.errors import Conflict, InvalidRequest, NotFound
from tuneforge.jobs.limits import JobLimits, QuotaExceeded
from tuneforge.jobs.spec import JobCreate, check_method, effective_hyperparameters, plan_training

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running")
FILE_PURPOSES = ("fine-tune", "fine-tune-results")
DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"}
# An upload's temporary file (`files/.upload-*`) older than this is left by a crashed
# request and removed when a store opens; younger ones may be another process's upload.
UPLOAD_GRACE_S = 6 * 3600
_ALPHABET = string.ascii_letters + string.digits

T = TypeVar("T")
log = logging.getLogger("tuneforge.jobs.store")


def new_id(prefix: str, n: int = 24) -> str:
    """`prefix-` plus `n` random letters and digits, like OpenAI's ids."""
    return prefix + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def now() -> int:
    return int(time.time())


def fine_tuned_model_id(base: str, org: str, suffix: str | None, job_id: str) -> str:
    """`ft:{base}:{org}:{suffix}:{id}` (empty suffix allowed, as OpenAI's `ft:m:org::id`)."""
    return f"ft:{base}:{org}:{suffix or ''}:{job_id.removeprefix('ftjob-')}"


def checkpoint_model_id(model_id: str, step: int) -> str:
    return f"{model_id}:ckpt-step-{step}"


@dataclass
class Page:
    """One page of a cursor-paginated list."""

    data: list[Any]
    has_more: bool


@dataclass
class ResolvedModel:
    """A model id resolved to a folder: the base it descends from, and its own folder."""

    id: str
    base_model: str
    path: str
    job_id: str | None = None
    kind: str = "fine-tune"  # "fine-tune" or "checkpoint"
    org: str = ""
    created: int = 0


class JobStore:
    """The job store over one database URL and one data directory (uploaded files, outputs)."""

    def __init__(self, data_dir: str | Path, url: str | None = None, *, migrate: bool = True):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "files").mkdir(exist_ok=True)
        (self.data_dir / "jobs").mkdir(exist_ok=True)
        remove_orphaned_uploads(self.data_dir / "files")
        self.url = url or f"sqlite:///{self.data_dir / 'tuneforge.db'}"
        self.engine = db.make_engine(self.url)
        if migrate:
            db.migrate(self.engine, self.data_dir / ".migrate.lock")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        sqlite = self.url.startswith("sqlite")
        self.read_engine = db.make_engine(self.url, writer=False) if sqlite else self.engine
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        # Caps and per-organization quotas of jobs and files (the server sets its own).
        self.limits = JobLimits()

    @classmethod
    def open(cls, data_dir: str | Path = "tuneforge-data", url: str | None = None) -> JobStore:
        """Open (creating and migrating as needed) the store in `data_dir`."""
        return cls(data_dir, url)

    def close(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One read-write transaction: committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """One read-only transaction (never waits for writers on SQLite/WAL)."""
        with self._read_sessions() as s, s.begin():
            yield s

    def _ensure_org(self, s: Session, org_id: str) -> None:
        if s.get(db.Organization, org_id) is None:
            s.add(db.Organization(id=org_id, created_at=now()))
            s.flush()

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    # ------------------------------------------------------------------ files
    def add_file(
        self,
        org_id: str,
        filename: str,
        purpose: str,
        source: Path,
        *,
        job_id: str | None = None,
        validate: bool = True,
        limits: ReadLimits | None = None,
    ) -> File:
        """Take ownership of `source` (moved into the store under the file's id) and record it.

        `fine-tune` files are validated with the data pipeline's checks: status `processed`,
        or `error` with the problems (line numbers) in `status_details` and `report`. With
        `validate=False` the file is recorded as `uploaded` and `process_file` validates it
        later (the server does, off the request path).
        """
        self.admit_upload(org_id, purpose, source)
        if purpose not in FILE_PURPOSES:
            raise InvalidRequest(
                f"purpose must be one of {', '.join(FILE_PURPOSES)} (got {purpose!r})",
                param="purpose",
            )
        file_id = new_id("file", 22)
        suffix = Path(filename).suffix.lower()
        rel = f"files/{file_id}{suffix if suffix in DATA_SUFFIXES else '.jsonl'}"
        dest = self.data_dir / rel
        try:
            os.replace(source, dest)  # the temporary file sits in files/: a rename
        except OSError:
            shutil.move(str(source), dest)  # another filesystem (a caller's own file)
        fsync_dir(dest.parent)
        status, details, report = "processed", None, None
        if purpose == "fine-tune":
            status = "uploaded"
            if validate:
                status, details, report = validate_upload(dest, limits)
        row = File(
            id=file_id,
            org_id=org_id,
            filename=Path(filename).name[:512] or "upload",
            purpose=purpose,
            bytes=dest.stat().st_size,
            created_at=now(),
            status=status,
            status_details=details,
            report=report,
            path=rel,
        )
        with self.session() as s:
            self._ensure_org(s, org_id)
            s.add(row)
        return row

    def admit_upload(self, org_id: str, purpose: str, source: Path) -> None:
        """Refuse (and delete) an upload that would take `org_id` past its storage quota.

        Files the jobs write (purpose fine-tune-results) are always kept: a finished job
        must not fail for its small results file.
        """
        if purpose == "fine-tune-results":
            return
        size = source.stat().st_size
        with self.reading() as s:
            used = s.scalar(
                select(func.coalesce(func.sum(File.bytes), 0)).where(File.org_id == org_id)
            )
        quota = self.limits.max_file_bytes
        if used + size > quota:
            source.unlink(missing_ok=True)
            raise QuotaExceeded(
                f"Storage quota exceeded: this organization stores {used} bytes of files and "
                f"the limit is {quota} bytes ({size} more were sent). Delete files you no "
                "longer need (DELETE /v1/files/{file_id}) and upload again.",
                param="file",
                code="insufficient_quota",
            )

    def process_file(self, file_id: str, limits: ReadLimits | None = None) -> File | None:
        """Validate an `uploaded` file and record `processed` or `error` (None: no such file).

        Idempotent and safe to race (the server's validation pool and a worker waiting on the
        file may both run it): the status moves only from `uploaded`, so the first to finish
        writes it and the other's identical verdict is dropped.
        """
        with self.reading() as s:
            row = s.scalar(select(File).where(File.id == file_id))
        if row is None or row.status != "uploaded":
            return row
        path = self.file_path(row)
        if path.is_file():
            status, details, report = validate_upload(path, limits)
        else:
            status, details, report = "error", "the file's bytes are missing from the store", None
        with self.session() as s:
            res = s.execute(
                update(File)
                .where(File.id == file_id, File.status == "uploaded")
                .values(status=status, status_details=details, report=report)
            )
            if res.rowcount == 1 and status == "processed":
                self._queue_jobs_waiting_on(s, file_id)
        with self.reading() as s:
            return s.scalar(select(File).where(File.id == file_id))

    def _queue_jobs_waiting_on(self, s: Session, file_id: str) -> None:
        """Move jobs no worker holds from `validating_files` to `queued` once all their files
        are processed. (A file that ends `error` fails its jobs when a worker claims them.)"""
        waiting = s.scalars(
            select(Job).where(
                Job.status == "validating_files",
                Job.worker_id.is_(None),
                or_(Job.training_file == file_id, Job.validation_file == file_id),
            )
        )
        for job in waiting:
            ids = [i for i in (job.training_file, job.validation_file) if i]
            statuses = s.scalars(select(File.status).where(File.id.in_(ids))).all()
            if all(st == "processed" for st in statuses):
                job.status = "queued"
                job.version += 1
                self._event(s, job.id, "Files validated, moving job to queued state")

    def unprocessed_files(self) -> list[str]:
        """Ids of files still `uploaded` (a server that stopped mid-validation left them)."""
        with self.reading() as s:
            q = select(File.id).where(File.status == "uploaded").order_by(File.seq)
            return list(s.scalars(q))

    def get_file(self, org_id: str, file_id: str) -> File:
        with self.reading() as s:
            row = s.scalar(select(File).where(File.id == file_id, File.org_id == org_id))
        if row is None:
            raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")
        return row

    def file_path(self, row: File) -> Path:
        return self.data_dir / row.path

    def list_files(
        self,
        org_id: str,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10000,
        order: str = "desc",
    ) -> Page:
        in_org = File.org_id == org_id
        q = select(File).where(in_org)
        if purpose:
            q = q.where(File.purpose == purpose)
        return self._page(q, File, after, limit, order, in_org)

    def delete_file(self, org_id: str, file_id: str) -> None:
        row = self.get_file(org_id, file_id)
        with self.session() as s:
            s.execute(delete(File).where(File.id == row.id))
        with contextlib.suppress(FileNotFoundError):
            self.file_path(row).unlink()

    # ------------------------------------------------------------------ pagination
    def _seq_of(self, s: Session, table: Any, obj_id: str, *scope: Any) -> int | None:
        """The cursor position of `obj_id`, None unless it matches `scope` (its org or job):
        another organization's id must look exactly like one that never existed."""
        return s.scalar(select(table.seq).where(table.id == obj_id, *scope))

    def _page(
        self, q: Any, table: Any, after: str | None, limit: int, order: str, *scope: Any
    ) -> Page:
        """One page of `q` (rows of `table`) by cursor; `after` must match `scope` (the
        caller's org or job), not the page's other filters."""
        limit = max(1, min(int(limit), 10000))
        desc = order != "asc"
        with self.reading() as s:
            if after:
                seq = self._seq_of(s, table, after, *scope)
                if seq is None:
                    raise NotFound(f"`after`: no such object {after!r}", param="after")
                q = q.where(table.seq < seq if desc else table.seq > seq)
            q = q.order_by(table.seq.desc() if desc else table.seq.asc()).limit(limit + 1)
            rows = list(s.scalars(q))
        return Page(rows[:limit], len(rows) > limit)

    # ------------------------------------------------------------------ models
    def resolve_model(self, org_id: str | None, model_id: str) -> ResolvedModel:
        """A fine-tuned model or checkpoint id of `org_id` (any organization when None) -> its
        folder (NotFound otherwise). At most three indexed lookups by primary / unique key:
        the server calls this on every inference request."""
        with self.reading() as s:
            q = select(Model).where(Model.id == model_id)
            m = s.scalar(q if org_id is None else q.where(Model.org_id == org_id))
            if m is not None:
                return ResolvedModel(
                    m.id, m.base_model, m.path, m.job_id, "fine-tune", m.org_id, m.created_at
                )
            q2 = select(JobCheckpoint).where(JobCheckpoint.model_id == model_id)
            c = s.scalar(q2 if org_id is None else q2.where(JobCheckpoint.org_id == org_id))
            if c is not None:
                job = s.scalar(select(Job).where(Job.id == c.job_id))
                return ResolvedModel(
                    c.model_id,
                    job.base_model,
                    c.path,
                    c.job_id,
                    "checkpoint",
                    c.org_id,
                    c.created_at,
                )
        raise NotFound(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    def list_models(
        self, org_id: str | None = None, checkpoints: bool = True
    ) -> list[ResolvedModel]:
        """Fine-tuned models (and their checkpoints) of `org_id`, or of everyone when None."""
        out: list[ResolvedModel] = []
        with self.reading() as s:
            q = select(Model).order_by(Model.seq)
            if org_id is not None:
                q = q.where(Model.org_id == org_id)
            for m in s.scalars(q):
                out.append(
                    ResolvedModel(
                        m.id, m.base_model, m.path, m.job_id, "fine-tune", m.org_id, m.created_at
                    )
                )
            if checkpoints:
                q2 = select(JobCheckpoint, Job.base_model).join(Job, Job.id == JobCheckpoint.job_id)
                q2 = q2.order_by(JobCheckpoint.seq)
                if org_id is not None:
                    q2 = q2.where(JobCheckpoint.org_id == org_id)
                for c, base in s.execute(q2):
                    out.append(
                        ResolvedModel(
                            c.model_id,
                            base,
                            c.path,
                            c.job_id,
                            "checkpoint",
                            c.org_id,
                            c.created_at,
                        )
                    )
        return out

    def delete_model(self, org_id: str, model_id: str) -> None:
        """Delete a fine-tuned model: its row, its job's checkpoints (rows, so their ids stop
        resolving) and their folders on disk. The job itself and its result files stay."""
        with self.session() as s:
            m = s.scalar(select(Model).where(Model.id == model_id, Model.org_id == org_id))
            if m is None:
                raise NotFound(
                    f"The model '{model_id}' does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
            child = s.scalar(
                select(Job.id).where(
                    Job.parent_model == model_id, Job.status.in_((*ACTIVE, "paused"))
                )
            )
            if child is not None:  # it would fail when it starts from the missing folder
                raise Conflict(
                    f"The model '{model_id}' is the starting point of fine-tuning job {child}; "
                    "cancel the job or let it finish first.",
                    param="model",
                    code="model_in_use",
                )
            folders = [Path(m.path)]
            if m.job_id is not None:
                of_job = JobCheckpoint.job_id == m.job_id
                folders += [Path(p) for p in s.scalars(select(JobCheckpoint.path).where(of_job))]
                s.execute(delete(JobCheckpoint).where(of_job))
            s.delete(m)
        # Rows first: once committed nothing resolves to these folders any more.
        for folder in folders:
            real = Path(os.path.realpath(folder))
            if real != self.data_dir and self.data_dir in real.parents:  # only our own outputs
                shutil.rmtree(real, ignore_errors=True)

    # ------------------------------------------------------------------ jobs (client side)
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
        supervised: dict[str, Any] = {"hyperparameters": hyper}
        if req.method and req.method.supervised and req.method.supervised.tuneforge:
            supervised["tuneforge"] = req.method.supervised.tuneforge
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
            method={"type": "supervised", "supervised": supervised},
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
            active = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.org_id == org_id, Job.status.in_(ACTIVE))
            )
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

    def get_job(self, org_id: str | None, job_id: str) -> Job:
        """The job (of `org_id`; any organization when None, for the operator's CLI)."""
        with self.reading() as s:
            q = select(Job).where(Job.id == job_id)
            if org_id is not None:
                q = q.where(Job.org_id == org_id)
            job = s.scalar(q)
        if job is None:
            raise NotFound(f"No such fine-tuning job: {job_id}", param="id", code="job_not_found")
        return job

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
            if after:
                seq = self._seq_of(s, Job, after, *scope)
                if seq is None:
                    raise NotFound(f"`after`: no such object {after!r}", param="after")
                q = q.where(Job.seq < seq)
            rows = [
                j
                for j in s.scalars(q.order_by(Job.seq.desc()))
                if all((j.metadata_ or {}).get(k) == v for k, v in metadata.items())
            ]
        limit = max(1, min(int(limit), 10000))
        return Page(rows[:limit], len(rows) > limit)

    def list_events(
        self, org_id: str | None, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> Page:
        """Events newest first."""
        self.get_job(org_id, job_id)
        of_job = JobEvent.job_id == job_id
        return self._page(select(JobEvent).where(of_job), JobEvent, after, limit, "desc", of_job)

    def all_events(self, job_id: str) -> list[JobEvent]:
        """Every event of a job, oldest first."""
        with self.reading() as s:
            q = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
            return list(s.scalars(q))

    def list_checkpoints(
        self, org_id: str | None, job_id: str, *, after: str | None = None, limit: int = 10
    ) -> Page:
        """Checkpoints newest first."""
        self.get_job(org_id, job_id)
        of_job = JobCheckpoint.job_id == job_id
        q = select(JobCheckpoint).where(of_job)
        return self._page(q, JobCheckpoint, after, limit, "desc", of_job)

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
                self._set_terminal(s, job, "cancelled")
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
                job.control = None
                job.worker_id = None
                job.lease_expires_at = None
                job.estimated_finish = None
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
            if s.bind.dialect.name == "postgresql":
                q = q.with_for_update()
            job = s.scalar(q)
            change(s, job)
            job.version += 1
        return job

    # ------------------------------------------------------------------ events
    def _event(
        self,
        s: Session,
        job_id: str,
        message: str,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        s.add(
            JobEvent(
                id=new_id("ftevent"),
                job_id=job_id,
                created_at=now(),
                level=level,
                message=message,
                type=type,
                data=json_safe(data),
            )
        )

    def add_event(
        self,
        job_id: str,
        message: str,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        with self.session() as s:
            self._event(s, job_id, message, level, type, data)

    def _set_terminal(self, s: Session, job: Job, status: str) -> None:
        job.status = status
        job.finished_at = now()
        job.control = None
        job.worker_id = None
        job.lease_expires_at = None
        job.estimated_finish = None

    # ------------------------------------------------------------------ worker side
    def claim(self, worker_id: str, lease_s: float) -> Job | None:
        """Take the oldest runnable job and move it to `running` under this worker's lease.

        Runnable: queued (or validating) or running, and held by nobody: no worker, or its
        worker's lease expired (that worker died or stalled). Returns the job, or None.

        The claim is one compare-and-set: the UPDATE repeats the runnable condition and the
        row's `version`, so of two workers that read the same candidate exactly one wins, and a
        job held under a live lease is never taken, whatever its status. On PostgreSQL the
        candidate is also locked FOR UPDATE SKIP LOCKED, so workers claim different jobs
        without waiting on each other; SQLite serializes writers (BEGIN IMMEDIATE).
        """
        t = time.time()
        runnable = and_(
            Job.status.in_(("validating_files", "queued", "running")),
            or_(
                Job.worker_id.is_(None),
                Job.lease_expires_at.is_(None),
                Job.lease_expires_at < t,
            ),
        )
        with self.session() as s:
            q = select(Job).where(runnable).order_by(Job.seq).limit(1)
            if s.bind.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            job = s.scalar(q)
            if job is None:
                return None
            previous = (job.status, job.worker_id)
            res = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.version == job.version, runnable)
                .values(
                    status="running",
                    worker_id=worker_id,
                    lease_expires_at=t + lease_s,
                    attempts=Job.attempts + 1,
                    version=Job.version + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:
                return None
            if previous[1] is not None:
                self._event(
                    s,
                    job.id,
                    f"Worker {previous[1]} stopped responding (lease expired); "
                    f"worker {worker_id} takes the job over",
                    level="warn",
                )
        return self.get_job(None, job.id)

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> tuple[bool, str | None]:
        """Extend the lease. Returns (still ours, requested control: cancel / pause / None)."""
        with self.session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker_id == worker_id)
                .values(lease_expires_at=time.time() + lease_s)
            )
            if res.rowcount != 1:
                return False, None
            return True, s.scalar(select(Job.control).where(Job.id == job_id))

    def update_job(
        self,
        job_id: str,
        worker_id: str,
        *,
        event: tuple[str, dict[str, Any] | None] | None = None,
        **values: Any,
    ) -> bool:
        """Set fields of a job this worker holds (and log `event`, (message, data), in the
        same transaction); False, and nothing written, when the lease was lost."""
        with self.session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker_id == worker_id)
                .values(version=Job.version + 1, **values)
            )
            if res.rowcount != 1:
                return False
            if event is not None:
                self._event(s, job_id, event[0], data=event[1])
            return True

    def finish_job(
        self,
        job_id: str,
        worker_id: str,
        status: str,
        message: str,
        level: str = "info",
        *,
        events: Sequence[tuple[str, dict[str, Any] | None]] = (),
        **values: Any,
    ) -> bool:
        """Move a held job to `status` (terminal, paused or queued) and log `events` then
        `message`, all in one transaction: a worker killed half-way never leaves a finished
        job without its events, nor events of an outcome that was not recorded."""
        with self.session() as s:
            job = s.scalar(select(Job).where(Job.id == job_id, Job.worker_id == worker_id))
            if job is None:
                return False
            for ev_message, ev_data in events:
                self._event(s, job_id, ev_message, data=ev_data)
            for k, v in values.items():
                setattr(job, k, v)
            if status in TERMINAL:
                self._set_terminal(s, job, status)
            else:
                job.status = status
                job.control = None
                job.worker_id = None
                job.lease_expires_at = None
                job.estimated_finish = None
            job.version += 1
            self._event(s, job_id, message, level=level)
        return True

    def record_metrics(
        self, job_id: str, worker_id: str, records: list[dict[str, Any]], total_steps: int | None
    ) -> int:
        """Turn new per-step records into `metrics` events (steps past `last_step` only, so a
        resumed run that replays steps after its checkpoint logs each step once)."""
        with self.session() as s:
            job = s.scalar(select(Job).where(Job.id == job_id, Job.worker_id == worker_id))
            if job is None:
                return 0
            added = 0
            for rec in records:
                step = int(rec.get("step", 0))
                if step <= job.last_step:
                    continue
                data = {
                    k: v for k, v in rec.items() if isinstance(v, (int, float, str)) or v is None
                }
                data["total_steps"] = total_steps
                parts = [f"training loss={rec['train_loss']:.4f}"] if "train_loss" in rec else []
                if rec.get("valid_loss") is not None:
                    parts.append(f"validation loss={rec['valid_loss']:.4f}")
                msg = f"Step {step}/{total_steps or '?'}: " + ", ".join(parts)
                self._event(s, job_id, msg, type="metrics", data=data)
                job.last_step = step
                job.trained_tokens = int(rec.get("tokens", job.trained_tokens or 0))
                added += 1
            if added and total_steps:
                job.total_steps = total_steps
                elapsed = float(records[-1].get("elapsed") or 0)
                if job.last_step:
                    left = elapsed / job.last_step * max(0, total_steps - job.last_step)
                    job.estimated_finish = int(time.time() + left)
        return added

    def sync_checkpoints(
        self, job: Job, found: list[tuple[int, Path, dict[str, Any]]], worker_id: str
    ) -> list[int]:
        """Make the job's checkpoint rows match the checkpoint folders that exist (the
        trainer prunes old ones). Returns the steps newly recorded."""
        model_id = fine_tuned_model_id(job.base_model, job.org_id, job.suffix, job.id)
        steps = {step for step, _, _ in found}
        new: list[int] = []
        with self.session() as s:
            if s.scalar(select(Job.worker_id).where(Job.id == job.id)) != worker_id:
                return []
            rows = {
                c.step: c
                for c in s.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job.id))
            }
            for step, row in rows.items():
                if step not in steps:
                    s.delete(row)
            for step, path, metrics in found:
                if step in rows:
                    continue
                s.add(
                    JobCheckpoint(
                        id=new_id("ftckpt"),
                        job_id=job.id,
                        org_id=job.org_id,
                        created_at=now(),
                        step=step,
                        model_id=checkpoint_model_id(model_id, step),
                        metrics=json_safe({"step": step, **metrics}),
                        path=str(path),
                    )
                )
                self._event(s, job.id, f"Checkpoint created at step {step}", data={"step": step})
                new.append(step)
        return new

    def register_model(self, job: Job, path: Path) -> str:
        """Record the fine-tuned model a job produced; returns its `ft:` id."""
        model_id = fine_tuned_model_id(job.base_model, job.org_id, job.suffix, job.id)
        with self.session() as s:
            if s.scalar(select(Model).where(Model.id == model_id)) is None:
                s.add(
                    Model(
                        id=model_id,
                        org_id=job.org_id,
                        job_id=job.id,
                        created_at=now(),
                        base_model=job.base_model,
                        parent_model=job.parent_model,
                        path=str(path),
                    )
                )
        return model_id

    def count_jobs(self, status: str | None = None) -> int:
        with self.reading() as s:
            q = select(func.count()).select_from(Job)
            if status:
                q = q.where(Job.status == status)
            return int(s.scalar(q) or 0)


def held(job: Job, t: float | None = None) -> bool:
    """Whether a worker holds `job` under a live lease (it then owns the job's state)."""
    return (
        job.worker_id is not None
        and job.lease_expires_at is not None
        and job.lease_expires_at >= (time.time() if t is None else t)
    )


def json_safe(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """`data` with NaN / infinite floats (a diverged loss) as None: JSON has no NaN."""
    if data is None:
        return None
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()
    }


def validate_upload(
    path: Path, limits: ReadLimits | None = None
) -> tuple[str, str | None, dict[str, Any] | None]:
    """(status, status_details, report) of an uploaded training file, by the data pipeline.

    A streamed pass in bounded memory (one example at a time, hashes for duplicates, Parquet
    refused by its footer when over `limits`), whatever the file's size.
    """
    from tuneforge.data.io import DatasetError, stream_dataset
    from tuneforge.data.validate import validate_streamed

    try:
        report = validate_streamed(stream_dataset(path, limits=limits or ReadLimits()))
    except DatasetError as err:
        return "error", str(err).replace(str(path), "file"), None
    except Exception:  # a reader's bug must not leave the file `uploaded` forever
        log.exception("validating %s failed", path)
        return "error", "the file could not be read as a dataset", None
    as_dict = report.to_dict(limit=50)
    as_dict["path"] = None  # the store's path is nobody's business
    if report.ok:
        return "processed", None, as_dict
    errors = report.errors
    lines = []
    for p in errors[:20]:
        where = f"line {p.line}: " if p.line is not None else ""
        lines.append(f"{where}{p.message} [{p.code}]")
    more = report.counts_by_severity["error"] - len(lines)
    details = "; ".join(lines) + (f"; and {more} more errors" if more > 0 else "")
    return "error", details, as_dict


def remove_orphaned_uploads(files_dir: Path, grace_s: float = UPLOAD_GRACE_S) -> int:
    """Delete `.upload-*` files older than `grace_s` (a crashed upload's). Returns how many."""
    removed = 0
    cutoff = time.time() - grace_s
    for tmp in files_dir.glob(".upload-*"):
        with contextlib.suppress(FileNotFoundError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
    return removed


def write_upload(stream: Any, dest: Path, max_bytes: int, chunk: int = 1 << 20) -> int:
    """Copy a file-like `stream` into `dest`, refusing more than `max_bytes`. Returns the size.

    `chunk` bytes at a time, fsynced before returning (the row that points at the file is
    committed next: a crash must not leave it pointing at a file the kernel never wrote).
    On any error `dest` is removed.
    """
    from tuneforge.jobs.errors import TooLarge

    total = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            while True:
                block = stream.read(chunk)
                if not block:
                    break
                total += len(block)
                if total > max_bytes:
                    raise TooLarge(
                        f"File is larger than the {max_bytes:,}-byte upload limit.", param="file"
                    )
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        raise
    return total
