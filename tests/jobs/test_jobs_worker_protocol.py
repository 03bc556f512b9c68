"""The worker's side of a job, fast: a stand-in runner (tests/jobs/fake_runner.py) speaks
the training subprocess's protocol, so cancel, pause / resume, failure, shutdown and
success are checked in seconds. tests/jobs/test_jobs_worker.py runs real training."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from jobs_data import write_chat
from sqlalchemy import update

from tuneforge.jobs import JobCreate, Worker
from tuneforge.jobs.db import Job

FAKE = [sys.executable, str(Path(__file__).with_name("fake_runner.py"))]


def _create(store, upload, tmp_path, steps: int = 10):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    req = JobCreate(
        model="tiny-base",
        training_file=f.id,
        suffix="s",
        method={"type": "supervised", "supervised": {"tuneforge": {"optim.max_steps": steps}}},
    )
    return store.create_job("org-a", req)


@pytest.fixture
def worker(store):
    """A worker running in a thread on the fake runner."""
    w = Worker(store, lease_s=2, poll_s=0.05, idle_s=0.05, prewarm=False, command=FAKE)
    w.start_thread()
    yield w
    w.stop(timeout=30)


def _wait(store, job_id, status, step=0, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job("org-a", job_id)
        if job.status == status and job.last_step >= step:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id}: wanted {status} at step {step}, got {job.status}")


def _steps(store, job_id):
    return [e.data["step"] for e in store.all_events(job_id) if e.type == "metrics"]


def test_success_records_events_checkpoints_model_and_results(store, upload, tmp_path, worker):
    job = _create(store, upload, tmp_path, steps=6)
    done = _wait(store, job.id, "succeeded")
    assert _steps(store, job.id) == [1, 2, 3, 4, 5, 6]
    assert done.fine_tuned_model == f"ft:tiny-base:org-a:s:{job.id.removeprefix('ftjob-')}"
    assert done.trained_tokens == 60 and done.total_steps == 6 and done.error is None
    assert done.hyperparameters["learning_rate_multiplier"] == 1.0
    (result,) = done.result_files
    assert store.get_file("org-a", result).purpose == "fine-tune-results"
    steps = [c.step for c in store.list_checkpoints("org-a", job.id).data]
    assert steps == [6, 4, 2]
    assert store.resolve_model("org-a", done.fine_tuned_model + ":ckpt-step-4").kind == "checkpoint"
    messages = [e.message for e in store.all_events(job.id)]
    assert messages[-2:] == [
        f"New fine-tuned model created: {done.fine_tuned_model}",
        "The job has successfully completed",
    ]


def test_pause_resume_then_cancel(store, upload, tmp_path, worker):
    job = _create(store, upload, tmp_path, steps=200)
    _wait(store, job.id, "running", step=3)
    store.pause_job("org-a", job.id)
    paused = _wait(store, job.id, "paused")
    at = paused.last_step
    assert any(c.step == at for c in store.list_checkpoints("org-a", job.id).data)
    time.sleep(0.5)
    assert store.get_job("org-a", job.id).last_step == at  # nothing runs while paused
    store.resume_job("org-a", job.id)
    _wait(store, job.id, "running", step=at + 3)
    store.cancel_job("org-a", job.id)
    cancelled = _wait(store, job.id, "cancelled")
    assert cancelled.fine_tuned_model is None and cancelled.finished_at is not None
    steps = _steps(store, job.id)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 200
    messages = [e.message for e in store.all_events(job.id)]
    assert f"Fine-tuning job paused at step {at}" in messages
    assert f"Fine-tuning job resumed from the checkpoint at step {at}" in messages
    log = (store.job_dir(job.id) / "logs" / "attempt-2.log").read_text()
    assert f"resumed from step {at}" in log


def test_failure_is_reported_with_the_error(store, upload, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "1")
    job = _create(store, upload, tmp_path)
    Worker(store, poll_s=0.05, prewarm=False, command=FAKE).run(once=True)
    failed = store.get_job("org-a", job.id)
    assert failed.status == "failed"
    assert failed.error == {"code": "training_failed", "message": "boom", "param": None}
    assert any(e.level == "error" for e in store.all_events(job.id))


def test_worker_shutdown_requeues_and_the_next_worker_resumes(store, upload, tmp_path):
    job = _create(store, upload, tmp_path, steps=200)
    first = Worker(store, lease_s=2, poll_s=0.05, prewarm=False, command=FAKE)
    thread = threading.Thread(target=first.run)
    thread.start()
    _wait(store, job.id, "running", step=3)
    first.stop_event.set()
    thread.join(30)
    requeued = store.get_job("org-a", job.id)
    assert requeued.status == "queued" and requeued.worker_id is None
    second = Worker(store, lease_s=2, poll_s=0.05, prewarm=False, command=FAKE)
    thread = threading.Thread(target=second.run)
    thread.start()
    try:
        _wait(store, job.id, "running", step=requeued.last_step + 2)
    finally:
        second.stop_event.set()
        thread.join(30)
    steps = _steps(store, job.id)
    assert steps == list(range(1, len(steps) + 1))  # no step logged twice, none missing


def test_a_job_paused_after_its_claim_never_starts_training(store, upload, tmp_path):
    job = _create(store, upload, tmp_path, steps=6)
    w = Worker(store, lease_s=30, poll_s=0.05, prewarm=False, command=FAKE)
    claimed = store.claim(w.worker_id, w.lease_s)  # claimed, its training not started yet
    assert store.pause_job("org-a", job.id).control == "pause"
    assert w.run_job(claimed) == "paused"
    paused = store.get_job("org-a", job.id)
    assert paused.status == "paused" and paused.worker_id is None and paused.control is None
    assert _steps(store, job.id) == []  # nothing trained
    assert not (store.job_dir(job.id) / "run.json").exists()
    # Resumed, it runs to the end on the next claim.
    store.resume_job("org-a", job.id)
    w.run(once=True)
    assert store.get_job("org-a", job.id).status == "succeeded"
    assert _steps(store, job.id) == [1, 2, 3, 4, 5, 6]


def test_a_worker_that_lost_the_lease_before_starting_spawns_nothing(store, upload, tmp_path):
    job = _create(store, upload, tmp_path, steps=6)
    slow = Worker(store, lease_s=0.2, poll_s=0.05, prewarm=False, command=FAKE)
    claimed = store.claim(slow.worker_id, slow.lease_s)
    time.sleep(0.4)  # `slow` stalls past its lease; another worker takes the job over
    assert store.claim("w-other", lease_s=60).id == job.id
    assert slow.run_job(claimed) == "lost"
    logs = store.job_dir(job.id) / "logs"
    assert not logs.exists() or not list(logs.iterdir())  # no training process was started
    now = store.get_job("org-a", job.id)
    assert now.worker_id == "w-other" and now.status == "running"
    messages = [e.message for e in store.all_events(job.id)]
    assert "Fine-tuning job started" not in messages  # `slow` wrote nothing


def test_a_worker_that_loses_the_lease_while_training_kills_it(store, upload, tmp_path, worker):
    job = _create(store, upload, tmp_path, steps=400)
    _wait(store, job.id, "running", step=3)
    # Another worker takes the job over (as if this one had stalled past its lease).
    with store.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(worker_id="w-other", lease_expires_at=time.time() + 60)
        )
    time.sleep(1.0)  # a few polls
    at = store.get_job("org-a", job.id).last_step
    metrics = Path(store.get_job("org-a", job.id).train_overrides["output.dir"]) / "metrics.jsonl"
    lines = len(metrics.read_text().splitlines())
    time.sleep(0.6)
    assert len(metrics.read_text().splitlines()) == lines  # its training process is gone
    assert store.get_job("org-a", job.id).last_step == at
    assert store.get_job("org-a", job.id).worker_id == "w-other"


def test_the_metrics_tail_rereads_a_file_rewritten_past_its_offset(tmp_path):
    """A resumed trainer rewrites metrics.jsonl (kept steps) and appends new steps before the
    worker's next read: the new file is already longer than the old offset."""
    from tuneforge.fsutil import write_jsonl
    from tuneforge.jobs.worker import _Tail

    path = tmp_path / "metrics.jsonl"
    write_jsonl(path, [{"step": s, "train_loss": 1.0} for s in range(1, 10)])
    tail = _Tail(path)
    assert [r["step"] for r in tail.read()] == list(range(1, 10))
    # Resume from the checkpoint at step 8, then steps 9..12 with longer lines.
    write_jsonl(path, [{"step": s, "train_loss": 1.0} for s in range(1, 9)])
    with path.open("a") as f:
        for s in range(9, 13):
            f.write(json.dumps({"step": s, "train_loss": 0.5, "tokens": 10**6}) + "\n")
    assert [r["step"] for r in tail.read()] == list(range(1, 13))
