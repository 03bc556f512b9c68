"""`JobStore`: files, fine-tuning jobs, their events and checkpoints, and fine-tuned models.

Everything a client can see is scoped by organization: a getter given another
organization's id raises `NotFound`, exactly as for an id that never existed. The worker's
side (claiming, heartbeats, progress, outcomes) is guarded by the lease: a worker that lost
its lease cannot write a job's state any more.

One module per concern, `JobStore` their sum:

- `base`: the connection, sessions, ids, a job by id, writing an event;
- `paging`: cursor pagination;
- `uploads`: an upload's bytes (bounded write, validation, crashed uploads' leftovers);
- `files`: file rows, the storage quota;
- `models`: fine-tuned models and checkpoints;
- `lifecycle`: the client's side of a job (create, list, cancel, pause, resume);
- `lease`: the worker's side (the compare-and-set claim, heartbeats, updates, outcome);
- `events`: a job's events and per-step metrics.

Example:
    >>> store = JobStore.open("tuneforge-data")
    >>> f = store.add_file("org-a", "train.jsonl", "fine-tune", Path("upload.tmp"))
    >>> job = store.create_job("org-a", JobCreate(model="tiny", training_file=f.id))
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.jobs.store.base import (
    ACTIVE,
    TERMINAL,
    ResolvedModel,
    StoreBase,
    checkpoint_model_id,
    fine_tuned_model_id,
    held,
    json_safe,
    new_id,
    now,
)
from tuneforge.jobs.store.events import EventStore
from tuneforge.jobs.store.files import FILE_PURPOSES, FileStore
from tuneforge.jobs.store.lease import WorkerLease
from tuneforge.jobs.store.lifecycle import JobLifecycle
from tuneforge.jobs.store.models import ModelStore
from tuneforge.jobs.store.paging import Page
from tuneforge.jobs.store.uploads import (
    DATA_SUFFIXES,
    UPLOAD_GRACE_S,
    remove_orphaned_uploads,
    validate_upload,
    write_upload,
)


class JobStore(JobLifecycle, WorkerLease, EventStore):
    """The job store over one database URL and one data directory (uploaded files, outputs)."""

    @classmethod
    def open(cls, data_dir: str | Path = "tuneforge-data", url: str | None = None) -> JobStore:
        """Open (creating and migrating as needed) the store in `data_dir`."""
        return cls(data_dir, url)


__all__ = [
    "ACTIVE",
    "DATA_SUFFIXES",
    "FILE_PURPOSES",
    "TERMINAL",
    "UPLOAD_GRACE_S",
    "EventStore",
    "FileStore",
    "JobLifecycle",
    "JobStore",
    "ModelStore",
    "Page",
    "ResolvedModel",
    "StoreBase",
    "WorkerLease",
    "checkpoint_model_id",
    "fine_tuned_model_id",
    "held",
    "json_safe",
    "new_id",
    "now",
    "remove_orphaned_uploads",
    "validate_upload",
    "write_upload",
]
