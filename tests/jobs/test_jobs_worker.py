"""The worker on a real training subprocess: a job survives its worker being SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs_data import write_chat

from tuneforge.jobs import JobCreate


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _runner_pids(job_dir: Path) -> list[int]:
    """Training processes of this job still alive (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "tuneforge.jobs.runner" in cmd and str(job_dir) in cmd:
                pids.append(int(proc.name))
    return pids


def _start_worker(store_args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneforge",
            "worker",
            *store_args,
            "--lease-seconds",
            "2",
            "--no-prewarm",  # a standby training process would only compete for the CPU here
        ],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )


def test_sigkilled_worker_job_resumes_from_checkpoint_with_events_kept(
    store, store_args, upload, tmp_path, tiny_model_dir
):
    f = upload("org-a", write_chat(tmp_path / "train.jsonl", 16))
    req = JobCreate(
        model=str(tiny_model_dir),
        training_file=f.id,
        suffix="kill",
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 3, "batch_size": 4},  # 12 steps
                "tuneforge": {"lora": {"r": 4}, "checkpoint": {"save_every": 2}},
            },
        },
    )
    job = store.create_job("org-a", req)
    log = tmp_path / "worker.log"
    first = _start_worker(store_args, log)
    try:
        _wait(
            lambda: (
                store.get_job("org-a", job.id).last_step >= 4
                and store.list_checkpoints("org-a", job.id).data
            ),
            180,
            "training to pass step 3",
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    killed_at = store.get_job("org-a", job.id)
    assert killed_at.status == "running"  # nobody told the store: only the lease can
    # The training subprocess died with its worker (PR_SET_PDEATHSIG / watchdog).
    _wait(lambda: not _runner_pids(store.job_dir(job.id)), 10, "the runner to exit")

    second = _start_worker(store_args, log)
    try:
        done = _wait(
            lambda: (j := store.get_job("org-a", job.id)).status in ("succeeded", "failed") and j,
            240,
            "the job to finish",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.endswith(":kill:" + job.id.removeprefix("ftjob-"))
    assert done.attempts == 2

    events = store.all_events(job.id)
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == list(range(1, 13))  # every step logged exactly once, across both runs
    messages = [e.message for e in events]
    assert any("lease expired" in m for m in messages)
    resumed = [e for e in events if "resumed from the checkpoint" in e.message]
    assert len(resumed) == 1 and resumed[0].data["step"] >= 1
    # The second run continued from the checkpoint instead of starting over.
    second_log = (store.job_dir(job.id) / "logs" / "attempt-2.log").read_text()
    assert "resumed from" in second_log
    assert (Path(done.train_overrides["output.dir"]) / "adapter_model.safetensors").is_file()
