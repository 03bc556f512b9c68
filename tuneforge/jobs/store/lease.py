"""The worker's side of a job: the claim, the lease that guards every write, and the outcome.

A worker that lost its lease (it stalled and another took the job over) cannot write the
job's state any more: every update here is conditioned on `worker_id`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select, update

from tuneforge.jobs.db import Job
from tuneforge.jobs.store.base import TERMINAL, StoreBase, now, rowcount


def release(job: Job) -> None:
    """Clear the worker's hold on `job` (its lease, control request and estimate)."""
    job.control = None
    job.worker_id = None
    job.lease_expires_at = None
    job.estimated_finish = None


def set_terminal(job: Job, status: str) -> None:
    """Move `job` to a terminal `status`, released by its worker."""
    job.status = status
    job.finished_at = now()
    release(job)


class WorkerLease(StoreBase):
    """Claims, heartbeats and updates of a job held under a worker's lease."""

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
            if s.get_bind().dialect.name == "postgresql":
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
            if rowcount(res) != 1:
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
            if rowcount(res) != 1:
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
            if rowcount(res) != 1:
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
                set_terminal(job, status)
            else:
                job.status = status
                release(job)
            job.version += 1
            self._event(s, job_id, message, level=level)
        return True
