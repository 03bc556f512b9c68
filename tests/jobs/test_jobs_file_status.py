"""A file's status (`uploaded` -> `processed` / `error`) and what it means for jobs: a job may
wait on a file still being validated, and fails with OpenAI's `error` object when the file
turns out bad. Also the store's housekeeping of crashed uploads."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from jobs_data import write_chat

from tuneforge.jobs import InvalidRequest, JobCreate, JobStore, Worker

FAKE = [sys.executable, str(Path(__file__).with_name("fake_runner.py"))]


def _bad_chat(tmp_path: Path) -> Path:
    lines = write_chat(tmp_path / "x.jsonl", 12).read_text().splitlines()
    lines[2] = "{not json"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _unvalidated(store: JobStore, tmp_path: Path, source: Path):
    """A file as the server records it on upload: stored, not yet validated."""
    tmp = tmp_path / f"copy-{time.monotonic_ns()}"
    shutil.copyfile(source, tmp)
    return store.add_file("org-a", source.name, "fine-tune", tmp, validate=False)


def _req(train: str, valid: str | None = None) -> JobCreate:
    tuneforge = {"optim.max_steps": 2}
    return JobCreate(
        model="tiny-base",
        training_file=train,
        validation_file=valid,
        method={"type": "supervised", "supervised": {"tuneforge": tuneforge}},
    )


def _run_worker_once(store: JobStore) -> None:
    Worker(store, lease_s=2, poll_s=0.05, idle_s=0.05, prewarm=False, command=FAKE).run(once=True)


def test_uploaded_file_moves_to_processed_or_error_once(store, tmp_path):
    good = _unvalidated(store, tmp_path, write_chat(tmp_path / "good.jsonl", 12))
    bad = _unvalidated(store, tmp_path, _bad_chat(tmp_path))
    assert good.status == bad.status == "uploaded" and good.report is None
    assert store.unprocessed_files() == [good.id, bad.id]

    assert store.process_file(good.id).status == "processed"
    done = store.process_file(bad.id)
    assert done.status == "error" and "line 3:" in done.status_details
    assert done.report["examples_read"] == 12 and done.report["path"] is None
    assert store.unprocessed_files() == []
    assert store.process_file(bad.id).status_details == done.status_details  # a no-op now


def test_job_on_a_file_still_uploaded_waits_then_fails_with_an_error_object(store, tmp_path):
    bad = _unvalidated(store, tmp_path, _bad_chat(tmp_path))
    job = store.create_job("org-a", _req(bad.id))  # accepted: the file is not known bad yet
    assert job.status == "validating_files"

    _run_worker_once(store)
    done = store.get_job("org-a", job.id)
    assert done.status == "failed"
    assert done.error["code"] == "invalid_training_file"
    assert done.error["param"] == "training_file"
    assert bad.id in done.error["message"] and "line 3:" in done.error["message"]
    assert store.get_file("org-a", bad.id).status == "error"
    with pytest.raises(InvalidRequest, match="failed validation") as err:  # now refused at once
        store.create_job("org-a", _req(bad.id))
    assert err.value.param == "training_file"


def test_bad_validation_file_names_validation_file(store, tmp_path):
    good = _unvalidated(store, tmp_path, write_chat(tmp_path / "good.jsonl", 12))
    bad = _unvalidated(store, tmp_path, _bad_chat(tmp_path))
    job = store.create_job("org-a", _req(good.id, bad.id))
    _run_worker_once(store)
    done = store.get_job("org-a", job.id)
    assert done.status == "failed" and done.error["param"] == "validation_file"
    assert done.error["code"] == "invalid_validation_file"
    assert store.get_file("org-a", good.id).status == "processed"


def test_job_on_a_good_file_still_uploaded_runs(store, tmp_path):
    good = _unvalidated(store, tmp_path, write_chat(tmp_path / "good.jsonl", 12))
    job = store.create_job("org-a", _req(good.id))
    _run_worker_once(store)
    assert store.get_job("org-a", job.id).status == "succeeded"
    assert store.get_file("org-a", good.id).status == "processed"


def test_orphaned_upload_files_are_removed_when_the_store_opens(tmp_path):
    files = tmp_path / "data" / "files"
    files.mkdir(parents=True)
    old, fresh = files / ".upload-crashed", files / ".upload-in-progress"
    old.write_bytes(b"half an upload")
    fresh.write_bytes(b"another process is writing this")
    long_ago = time.time() - 30 * 86400  # well past the grace period
    os.utime(old, (long_ago, long_ago))
    store = JobStore.open(tmp_path / "data")
    try:
        assert not old.exists() and fresh.exists()  # a live upload of another process is kept
        # A stored file is moved into place by rename, with no temporary left behind.
        f = _unvalidated(store, tmp_path, write_chat(tmp_path / "t.jsonl", 12))
        assert store.file_path(f).read_text() == (tmp_path / "t.jsonl").read_text()
        assert sorted(p.name for p in files.iterdir()) == sorted(
            [fresh.name, store.file_path(f).name]
        )
    finally:
        store.close()


def test_upload_report_keeps_line_numbers_of_a_large_file(store, tmp_path):
    """Validation is streamed: a file with thousands of problems lists the first ones and
    counts all of them."""
    lines = [json.dumps({"messages": [{"role": "user", "content": "x"}]})] * 3000
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(lines) + "\n")
    f = store.process_file(_unvalidated(store, tmp_path, path).id)
    assert f.status == "error" and "; line 1: no assistant message" in f.status_details
    assert f.status_details.endswith("; and 2981 more errors")  # 20 of 3001 listed
    assert f.report["counts_by_severity"]["error"] == 3000 + 1  # and too_few_examples
    assert len(f.report["problems"]) == 50


def test_a_waiting_job_is_queued_once_its_files_are_processed(store, tmp_path):
    train = _unvalidated(store, tmp_path, write_chat(tmp_path / "train.jsonl", 12))
    valid = _unvalidated(store, tmp_path, write_chat(tmp_path / "valid.jsonl", 12, seed=3))
    job = store.create_job("org-a", _req(train.id, valid.id))
    assert job.status == "validating_files"
    store.process_file(train.id)
    assert store.get_job("org-a", job.id).status == "validating_files"  # one file to go
    store.process_file(valid.id)
    assert store.get_job("org-a", job.id).status == "queued"
    messages = [e.message for e in store.all_events(job.id)]
    assert messages.count("Files validated, moving job to queued state") == 1
    # Files already processed: the job waits for a worker as `queued` from the start.
    assert store.create_job("org-a", _req(train.id)).status == "queued"
