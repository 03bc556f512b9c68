"""The store's foundation: ids, the database connection and its sessions, and what every part
of the store uses (a job by id, an event, a page of rows).

`JobStore` (in `tuneforge.jobs.store`) is this base plus one mixin per concern: files,
models and checkpoints, the client's side of a job, the worker's side (claim and lease),
events and metrics.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Result, select
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.jobs import db
from tuneforge.jobs.db import Job, JobEvent
from tuneforge.jobs.errors import NotFound
from tuneforge.jobs.limits import JobLimits
from tuneforge.jobs.store.paging import Page, page
from tuneforge.jobs.store.uploads import remove_orphaned_uploads

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running")
_ALPHABET = string.ascii_letters + string.digits


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
class ResolvedModel:
    """A model id resolved to a folder: the base it descends from, and its own folder."""

    id: str
    base_model: str
    path: str
    job_id: str | None = None
    kind: str = "fine-tune"  # "fine-tune" or "checkpoint"
    org: str = ""
    created: int = 0


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


def rowcount(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched (`Session.execute` is typed as returning a
    plain `Result`; for those statements it is a `CursorResult`)."""
    assert isinstance(result, CursorResult)
    return result.rowcount


class StoreBase:
    """One database URL and one data directory (uploaded files, outputs), and the sessions
    over them."""

    def __init__(
        self, data_dir: str | Path, url: str | None = None, *, migrate: bool = True
    ) -> None:
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

    def _page(
        self, q: Any, table: Any, after: str | None, limit: int, order: str, *scope: Any
    ) -> Page:
        """One page of `q` (rows of `table`) by cursor; `after` must match `scope` (the
        caller's org or job), not the page's other filters."""
        with self.reading() as s:
            return page(s, q, table, after, limit, order, *scope)
