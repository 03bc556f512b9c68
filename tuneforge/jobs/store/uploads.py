"""An uploaded file's bytes: written to the store bounded and fsynced, validated by the data
pipeline, and the leftovers of a crashed upload removed."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from tuneforge.data.io import ReadLimits

DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"}
# An upload's temporary file (`files/.upload-*`) older than this is left by a crashed
# request and removed when a store opens; younger ones may be another process's upload.
UPLOAD_GRACE_S = 6 * 3600

log = logging.getLogger("tuneforge.jobs.store")


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
