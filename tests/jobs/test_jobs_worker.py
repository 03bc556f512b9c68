"""The worker on a real training subprocess: a job survives its worker being SIGKILLed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs_data import write_chat

from tuneforge.jobs import JobCreate, JobStore


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


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (Linux: the SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_a_stop_during_setup_still_ends_after_one_step_with_a_checkpoint(tmp_path, tiny_model_dir):
    """A pause or cancel reaches training while it is still importing torch and loading the
    model: the runner holds the signal until the loop listens, then stops after its first
    optimizer step with a checkpoint (the default action would kill it with nothing saved)."""
    store = JobStore.open(tmp_path / "data")
    src = write_chat(tmp_path / "train.jsonl", 16)
    shutil.copyfile(src, tmp_path / "upload.jsonl")
    f = store.add_file("org-a", "train.jsonl", "fine-tune", tmp_path / "upload.jsonl")
    req = JobCreate(
        model=str(tiny_model_dir),
        training_file=f.id,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 3, "batch_size": 4},
                "tuneforge": {"lora": {"r": 4}, "checkpoint": {"save_every": 100}},
            },
        },
    )
    job = store.create_job("org-a", req)
    job_dir = store.job_dir(job.id)
    (job_dir / "overrides.json").write_text(json.dumps(job.train_overrides))
    env = dict(os.environ, TUNEFORGE_WORKER_PID=str(os.getpid()))
    with open(tmp_path / "runner.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuneforge.jobs.runner", str(job_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Signal once the runner listens, or after 1 s at most: either way long before its
        # setup (seconds of imports and model loading) is done.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not _catches_sigterm(proc.pid):
            time.sleep(0.01)
        assert not (job_dir / "run.json").exists()  # still setting up
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store.close()
    assert rc == 130, (tmp_path / "runner.log").read_text()[-2000:]
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "stopped" and result["step"] == 1
    out = Path(job.train_overrides["output.dir"])
    assert (out / "checkpoints" / "step-000001" / "trainer_state.json").is_file()
