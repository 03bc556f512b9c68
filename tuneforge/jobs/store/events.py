"""A job's events: messages, and the per-step metrics the worker reports."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from tuneforge.jobs.db import Job, JobEvent
from tuneforge.jobs.store.base import StoreBase
from tuneforge.jobs.store.paging import Page


class EventStore(StoreBase):
    """Events of jobs (the job's log, newest first for clients)."""

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
                for key, name in (
                    ("train_reward_accuracy", "reward accuracy"),
                    ("valid_reward_accuracy", "validation reward accuracy"),
                ):
                    if rec.get(key) is not None:
                        parts.append(f"{name}={rec[key]:.2f}")
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
