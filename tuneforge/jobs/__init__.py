"""Jobs: the job store (files, jobs, events, checkpoints, fine-tuned models) and the worker.

The store is SQLAlchemy over SQLite (WAL) in a data directory, or PostgreSQL for a queue
shared by many workers; the worker runs each job's training in a subprocess. The HTTP routes
in `tuneforge.server.routes` and the `tuneforge jobs` commands are thin layers over these.

Example:
    >>> store = JobStore.open("tuneforge-data")
    >>> Worker(store).run(once=True)
"""

from tuneforge.jobs.errors import Conflict, InvalidRequest, NotFound, StoreError, TooLarge
from tuneforge.jobs.spec import JobCreate
from tuneforge.jobs.store import JobStore
from tuneforge.jobs.worker import Worker

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
