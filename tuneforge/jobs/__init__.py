"""Jobs: the job store (files, jobs, events, checkpoints, fine-tuned models) and the worker.

The store is SQLAlchemy over SQLite (WAL) in a data directory, or PostgreSQL for a queue
shared by many workers; the worker runs each job's training in a subprocess. The HTTP routes
in `tuneforge.server.routes` and the `tuneforge jobs` commands are thin layers over these.

Example:
    >>> store = JobStore.open("tuneforge-data")
    >>> Worker(store).run(once=True)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneforge.jobs.errors import Conflict, InvalidRequest, NotFound, StoreError, TooLarge
    from tuneforge.jobs.spec import JobCreate
    from tuneforge.jobs.store import JobStore
    from tuneforge.jobs.worker import Worker

# Imported on first use (PEP 562): the training subprocess, `python -m tuneforge.jobs.runner`,
# starts inside this package and must not pay for SQLAlchemy and the store (seconds) before
# it can install its signal handlers.
_EXPORTS = {
    "Conflict": "tuneforge.jobs.errors",
    "InvalidRequest": "tuneforge.jobs.errors",
    "NotFound": "tuneforge.jobs.errors",
    "StoreError": "tuneforge.jobs.errors",
    "TooLarge": "tuneforge.jobs.errors",
    "JobCreate": "tuneforge.jobs.spec",
    "JobStore": "tuneforge.jobs.store",
    "Worker": "tuneforge.jobs.worker",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "Conflict",
    "InvalidRequest",
    "JobCreate",
    "JobStore",
    "NotFound",
    "StoreError",
    "TooLarge",
    "Worker",
]
