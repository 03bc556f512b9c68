"""OpenAI's public shapes of files, jobs, events and checkpoints, built from store rows.

Named by role: `FilePublic`, `JobPublic`, `EventPublic`, `CheckpointPublic`, and `ListPage`
for every paginated list. Every field OpenAI's schema has is present, null where it allows
(`error`, `fine_tuned_model`, `finished_at`, ...), so the official client parses them
unchanged. TuneForge adds a few fields of its own (`report` on files: the data pipeline's
validation report; `tuneforge` on jobs: progress and the parent model).
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from tuneforge.jobs.db import File, Job, JobCheckpoint, JobEvent

T = TypeVar("T")


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: str
    status_details: str | None
    report: dict[str, Any] | None = None

    @classmethod
    def of(cls, f: File) -> FilePublic:
        return cls.model_validate(f, from_attributes=True)


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class JobError(BaseModel):
    code: str
    message: str
    param: str | None


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[dict[str, Any]] | None
    metadata: dict[str, str] | None
    method: dict[str, Any]
    user_provided_suffix: str | None
    tuneforge: dict[str, Any]

    @classmethod
    def of(cls, j: Job) -> JobPublic:
        method = dict(j.method)
        kind = method.get("type", "supervised")
        settings = dict(method.get(kind) or {})
        settings["hyperparameters"] = j.hyperparameters
        method[kind] = settings
        return cls(
            id=j.id,
            created_at=j.created_at,
            error=JobError(**j.error) if j.error else None,
            fine_tuned_model=j.fine_tuned_model,
            finished_at=j.finished_at,
            hyperparameters=j.hyperparameters,
            model=j.model,
            organization_id=j.org_id,
            result_files=list(j.result_files or []),
            seed=j.seed,
            status=j.status,
            trained_tokens=j.trained_tokens,
            training_file=j.training_file,
            validation_file=j.validation_file,
            estimated_finish=j.estimated_finish if j.status == "running" else None,
            integrations=None,
            metadata=j.metadata_,
            method=method,
            user_provided_suffix=j.suffix,
            tuneforge={
                "base_model": j.base_model,
                "parent_model": j.parent_model,
                "step": j.last_step,
                "total_steps": j.total_steps,
                "control": j.control,
                "attempts": j.attempts,
            },
        )


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None
    type: str

    @classmethod
    def of(cls, e: JobEvent) -> EventPublic:
        return cls.model_validate(e, from_attributes=True)


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    # Preference (DPO) jobs: see docs/preference.md.
    train_reward_accuracy: float | None = None
    train_reward_margin: float | None = None
    valid_reward_accuracy: float | None = None
    valid_reward_margin: float | None = None


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int

    @classmethod
    def of(cls, c: JobCheckpoint) -> CheckpointPublic:
        known = CheckpointMetrics.model_fields
        return cls(
            id=c.id,
            created_at=c.created_at,
            fine_tuned_model_checkpoint=c.model_id,
            fine_tuning_job_id=c.job_id,
            metrics=CheckpointMetrics(**{k: v for k, v in c.metrics.items() if k in known}),
            step_number=c.step,
        )


class ListPage(BaseModel, Generic[T]):
    """OpenAI's cursor page: `after` the last id to get the next one while `has_more`."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None
    last_id: str | None

    @classmethod
    def of(cls, items: list[T], has_more: bool) -> ListPage[T]:
        ids = [getattr(i, "id", None) for i in items]
        return cls(
            data=items,
            has_more=has_more,
            first_id=ids[0] if ids else None,
            last_id=ids[-1] if ids else None,
        )
