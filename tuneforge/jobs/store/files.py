"""Files: uploads recorded and validated, listed, deleted, and the storage quota."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from tuneforge.data.io import ReadLimits
from tuneforge.fsutil import fsync_dir
from tuneforge.jobs.db import File, Job
from tuneforge.jobs.errors import InvalidRequest, NotFound
from tuneforge.jobs.limits import QuotaExceeded
from tuneforge.jobs.store.base import StoreBase, new_id, now, rowcount
from tuneforge.jobs.store.paging import Page
from tuneforge.jobs.store.uploads import DATA_SUFFIXES, validate_upload

FILE_PURPOSES = ("fine-tune", "fine-tune-results")


class FileStore(StoreBase):
    """The store's files (`files/` in the data directory, a row each)."""

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
            used = s.execute(
                select(func.coalesce(func.sum(File.bytes), 0)).where(File.org_id == org_id)
            ).scalar_one()
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
            if rowcount(res) == 1 and status == "processed":
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
