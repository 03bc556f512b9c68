"""Fine-tuned models and checkpoints: recorded by the worker, resolved to a folder on every
inference request, listed and deleted by their organization."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from tuneforge.jobs.db import Job, JobCheckpoint, Model
from tuneforge.jobs.errors import Conflict, NotFound
from tuneforge.jobs.store.base import (
    ACTIVE,
    ResolvedModel,
    StoreBase,
    checkpoint_model_id,
    fine_tuned_model_id,
    json_safe,
    new_id,
    now,
)
from tuneforge.jobs.store.paging import Page


class ModelStore(StoreBase):
    """Fine-tuned models (a row and a folder each) and the checkpoints of jobs."""

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
                job = s.scalars(select(Job).where(Job.id == c.job_id)).one()  # its foreign key
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

    def list_checkpoints(
        self, org_id: str | None, job_id: str, *, after: str | None = None, limit: int = 10
    ) -> Page:
        """Checkpoints newest first."""
        self.get_job(org_id, job_id)
        of_job = JobCheckpoint.job_id == job_id
        q = select(JobCheckpoint).where(of_job)
        return self._page(q, JobCheckpoint, after, limit, "desc", of_job)

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
