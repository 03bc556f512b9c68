"""The job worker: claims jobs, runs training in a subprocess, and reports progress.

(Longer than ~500 lines: one class owns the whole life of a claimed job, from claim to
terminal state, so the lease, the subprocess and the stop protocol read in one place.)

One `Worker` runs one job at a time (start several processes, on one database, for more):

1. `claim` a queued job (or a running one whose worker's lease expired) with a lease;
2. spawn `python -m tuneforge.jobs.runner JOB_DIR` (training in its own process: a crash or
   an out-of-memory kill of training never takes the worker down, and GPU memory is returned
   when it exits);
3. every `poll_s`: heartbeat the lease, turn new lines of the run's `metrics.jsonl` into
   `metrics` events, record new checkpoints, and act on cancel / pause requests: SIGTERM
   first (the training loop checkpoints and stops at the end of the current step), SIGKILL
   after `stop_grace_s`;
4. record the outcome: the fine-tuned model, the results CSV, or the error.

Jobs always train with `checkpoint.resume: auto`, so a job that was paused, or whose worker
was killed (even SIGKILL: the lease expires, the next worker claims it), continues from its
newest checkpoint. Events are never rewritten: a resumed run adds events only for steps past
the last one already logged.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from tuneforge.fsutil import write_json
from tuneforge.jobs.db import Job
from tuneforge.jobs.failures import error as job_error
from tuneforge.jobs.limits import JobLimits, training_environment
from tuneforge.jobs.store import JobStore, new_id

# The checkpoint layout, from the torch-free model folder module (the worker never imports
# torch: training runs in the runner's process).
from tuneforge.modeling.folder import CHECKPOINTS_DIR, checkpoint_steps

log = logging.getLogger("tuneforge.jobs.worker")

# The runner reads this to die with its worker (see tuneforge.jobs.runner).
PARENT_ENV = "TUNEFORGE_WORKER_PID"

MAX_ATTEMPTS = 5
_DPO_CHECKPOINT_KEYS = (
    "train_reward_accuracy",
    "train_reward_margin",
    "valid_reward_accuracy",
    "valid_reward_margin",
)


@dataclass
class _Tail:
    """Reads complete new lines of a JSONL file that may be rewritten (on resume).

    The trainer rewrites the file atomically (a new inode) when it resumes, so a changed inode
    means "read again from the start"; the size alone cannot tell, since the rewritten file may
    have grown past the old offset before the next read. Records already seen are harmless:
    the store keeps only steps past the job's last one.
    """

    path: Path
    offset: int = 0
    inode: int | None = None
    by_step: dict[int, dict[str, Any]] = field(default_factory=dict)
    synced: list[int] | None = None  # checkpoint steps last recorded in the store

    def read(self) -> list[dict[str, Any]]:
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return []
        with f:  # fstat of the open handle: its inode and size belong to what is read
            st = os.fstat(f.fileno())
            if st.st_ino != self.inode or st.st_size < self.offset:  # rewritten on resume
                self.inode, self.offset = st.st_ino, 0
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in chunk[:end].splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                out.append(rec)
                self.by_step[int(rec.get("step", 0))] = rec
        return out


class Worker:
    """Runs fine-tuning jobs from a `JobStore`, one at a time.

    Example:
        >>> worker = Worker(JobStore.open("tuneforge-data"))
        >>> worker.run(stop_event)      # until stop_event is set
    """

    def __init__(
        self,
        store: JobStore,
        *,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        poll_s: float = 0.5,
        idle_s: float = 1.0,
        stop_grace_s: float = 120.0,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        prewarm: bool = True,
        command: list[str] | None = None,
        max_wall_s: float | None = None,
    ):
        self.store = store
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.idle_s = idle_s
        self.stop_grace_s = stop_grace_s
        self.env = env
        self.prewarm = prewarm
        # Wall-clock limit of one run of a job (JobLimits.max_wall_s unless given).
        self.max_wall_s = max_wall_s if max_wall_s is not None else JobLimits().max_wall_s
        # The runner's argv before JOB_DIR (tests substitute a stand-in for training).
        self.command = command or [python, "-m", "tuneforge.jobs.runner"]
        self.stop_event = threading.Event()
        self._spare: subprocess.Popen | None = None

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event | None = None, *, once: bool = False) -> None:
        """Claim and run jobs until `stop` is set (or, with `once`, until none is waiting)."""
        if stop is not None:
            self.stop_event = stop
        try:
            self._loop(once)
        finally:
            self._drop_spare()

    def _loop(self, once: bool) -> None:
        while not self.stop_event.is_set():
            if self.prewarm and self._spare is None:
                self._spare = self._spawn(None, None)
            try:
                job = self.store.claim(self.worker_id, self.lease_s)
            except OperationalError as err:  # database unreachable: try again shortly
                log.warning("cannot claim a job: %s", err)
                self.stop_event.wait(self.idle_s)
                continue
            if job is None:
                if once:
                    return
                self.stop_event.wait(self.idle_s)
                continue
            try:
                self.run_job(job)
            except OperationalError as err:
                # The database, not the job, failed (training was killed): the lease expires
                # and a worker, maybe this one, resumes the job from its last checkpoint.
                log.warning("lost the database while running %s: %s", job.id, err)
                self.stop_event.wait(self.idle_s)
            except Exception as err:  # keep serving other jobs; the job itself is failed
                log.exception("job %s crashed the worker loop", job.id)
                # The client sees the exception's type only; the traceback is in the log.
                msg = f"Internal error in the worker ({type(err).__name__})"
                self.store.finish_job(
                    job.id,
                    self.worker_id,
                    "failed",
                    msg,
                    level="error",
                    error=job_error("internal_error", msg),
                )

    def start_thread(self) -> threading.Thread:
        """Run in a daemon thread (what `tuneforge serve` does); `stop()` ends it."""
        thread = threading.Thread(target=self.run, name="tuneforge-worker", daemon=True)
        thread.start()
        self._thread = thread
        return thread

    def stop(self, timeout: float | None = None) -> None:
        self.stop_event.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ one job
    def run_job(self, job: Job) -> str:
        """Run a claimed job until it ends, pauses, or this worker stops. Returns the status
        ("lost" when another worker took the job over: this one then writes nothing more).

        Every write is guarded by the lease: the first one that fails (`update_job`,
        `heartbeat` or `finish_job` returning False) ends the job here at once, before or
        after training was started (its process is killed)."""
        store, me = self.store, self.worker_id
        if job.control in ("cancel", "pause"):  # asked for while its last worker was dead
            return self._stop_unstarted(job, job.control)
        if job.attempts > MAX_ATTEMPTS:
            msg = f"The job was interrupted {job.attempts - 1} times; giving up."
            ok = store.finish_job(
                job.id,
                me,
                "failed",
                msg,
                level="error",
                error={"code": "too_many_attempts", "message": msg, "param": None},
            )
            return "failed" if ok else "lost"
        job_dir = store.job_dir(job.id)
        out_dir = Path(job.train_overrides["output.dir"])
        resumed_step = _latest_step(out_dir)
        if not resumed_step:  # never trained: its files must still be there, and validated
            error = self._check_files(job)
            if error:
                ok = store.finish_job(
                    job.id, me, "failed", error["message"], level="error", error=error
                )
                return "failed" if ok else "lost"
        if resumed_step:
            event = (
                f"Fine-tuning job resumed from the checkpoint at step {resumed_step}",
                {"step": resumed_step, "attempt": job.attempts},
            )
        else:
            event = ("Fine-tuning job started", None)
        # `claim` made the job `running`; this write checks the lease is still ours.
        if not store.update_job(job.id, me, status="running", error=None, event=event):
            log.warning("lost the lease of %s before starting it", job.id)
            return "lost"

        job_dir.mkdir(parents=True, exist_ok=True)
        write_json(job_dir / "overrides.json", job.train_overrides)  # fsynced: the runner reads it
        for name in ("run.json", "result.json"):
            with contextlib.suppress(FileNotFoundError):
                (job_dir / name).unlink()
        logs = job_dir / "logs"
        logs.mkdir(exist_ok=True)
        log_path = logs / f"attempt-{job.attempts}.log"
        # A pause or cancel that came in since the claim: act on it before training starts.
        ours, control = store.heartbeat(job.id, me, self.lease_s)
        if not ours:
            return "lost"
        if control in ("cancel", "pause"):
            return self._stop_unstarted(job, control)
        proc = self._take_spare(job_dir, log_path) or self._spawn(job_dir, log_path)
        try:
            return self._watch(job, proc, job_dir, out_dir)
        except BaseException:  # never leave training running unwatched
            _kill(proc, signal.SIGKILL)
            proc.wait()
            raise

    def _stop_unstarted(self, job: Job, control: str) -> str:
        """Record a cancel / pause that came before training started."""
        step = _latest_step(Path(job.train_overrides["output.dir"])) or 0
        if control == "cancel":
            status, message = "cancelled", "Fine-tuning job cancelled"
        else:
            status, message = "paused", f"Fine-tuning job paused at step {step}"
        return status if self.store.finish_job(job.id, self.worker_id, status, message) else "lost"

    def _spawn(self, job_dir: Path | None, log_path: Path | None) -> subprocess.Popen:
        """Start a runner for `job_dir`, or (None) a standby runner waiting on stdin."""
        # Training runs client-chosen settings: it gets no server secret (API keys, database
        # credentials), whatever the worker's own environment holds.
        env = training_environment(dict(os.environ if self.env is None else self.env))
        env[PARENT_ENV] = str(os.getpid())
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        args = [*self.command, str(job_dir or "--standby")]
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            return subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if job_dir is None else subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a Ctrl-C at the terminal goes to the worker only
            )
        finally:
            if log_path:
                out.close()

    def _take_spare(self, job_dir: Path, log_path: Path) -> subprocess.Popen | None:
        """Hand the job to the standby runner, if one is alive. (The next one starts once this
        job's setup is done, so the two do not compete for CPU while the job loads.)"""
        spare, self._spare = self._spare, None
        if spare is None or spare.poll() is not None or spare.stdin is None:
            return None
        try:
            spare.stdin.write(f"{job_dir}\t{log_path}\n".encode())
            spare.stdin.close()
        except OSError:
            return None
        return spare

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:  # it holds no state: no need to wait for its imports
            _kill(spare, signal.SIGKILL)
            spare.wait()

    def _check_files(self, job: Job) -> dict[str, Any] | None:
        """The job's `error` (OpenAI's shape) when a file of it is gone or failed validation.

        A file still `uploaded` (the server's validation pool has not reached it, or the
        server stopped) is validated here, the lease kept alive meanwhile.
        """
        files = (("training_file", job.training_file), ("validation_file", job.validation_file))
        validated = False
        for param, file_id in files:
            if not file_id:
                continue
            try:
                f = self.store.get_file(job.org_id, file_id)
            except Exception:
                message = f"File {file_id} was deleted before the job started."
                return {"code": f"invalid_{param}", "message": message, "param": param}
            if not self.store.file_path(f).is_file():
                message = f"File {file_id} is missing from the store."
                return {"code": f"invalid_{param}", "message": message, "param": param}
            if f.status == "uploaded":
                f = self._validate_file(job, file_id) or f
                validated = True
            if f.status == "error":
                message = f"File {file_id} failed validation: {f.status_details}"
                return {"code": f"invalid_{param}", "message": message, "param": param}
        if validated:
            self.store.add_event(job.id, "Files validated")
        return None

    @property
    def _beat_every(self) -> float:
        """Seconds between heartbeats: every poll (a heartbeat also carries cancel / pause, so
        a request reaches training within `poll_s`), and at least three times a lease."""
        return min(self.poll_s, self.lease_s / 3)

    def _validate_file(self, job: Job, file_id: str) -> Any:
        """`store.process_file` in a thread, heartbeating the job's lease until it is done."""
        result: dict[str, Any] = {}

        def run() -> None:
            result["file"] = self.store.process_file(file_id)

        thread = threading.Thread(target=run, name=f"validate-{file_id}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(self._beat_every)
            if thread.is_alive():
                self.store.heartbeat(job.id, self.worker_id, self.lease_s)
        return result.get("file")

    def _watch(self, job: Job, proc: subprocess.Popen, job_dir: Path, out_dir: Path) -> str:
        store, me = self.store, self.worker_id
        tail = _Tail(out_dir / "metrics.jsonl")
        total_steps: int | None = job.total_steps
        run_seen = False
        signalled_at: float | None = None
        reason: str | None = None  # "cancel", "pause", "shutdown", "timeout"
        last_beat = 0.0
        deadline = time.monotonic() + self.max_wall_s  # this run's wall-clock limit
        beat_every = self._beat_every  # the training loop stops after its current step
        while True:
            exited = proc.poll() is not None
            if not run_seen and (job_dir / "run.json").is_file():
                run = json.loads((job_dir / "run.json").read_text())
                total_steps = run["total_steps"]
                run_seen = True
                if not store.update_job(
                    job.id, me, hyperparameters=run["hyperparameters"], total_steps=total_steps
                ):
                    return self._lost(job, proc)
                if self.prewarm and self._spare is None and not self.stop_event.is_set():
                    self._spare = self._spawn(None, None)
            records = tail.read()
            if records:
                store.record_metrics(job.id, me, records, total_steps)
            self._sync_checkpoints(job, out_dir, tail)
            if exited:
                break
            now = time.monotonic()
            if now - last_beat >= beat_every:
                last_beat = now
                ours, control = store.heartbeat(job.id, me, self.lease_s)
                if not ours:
                    return self._lost(job, proc)
                if reason is None and control in ("cancel", "pause"):
                    reason = control
                if reason is None and self.stop_event.is_set():
                    reason = "shutdown"
                if reason is None and now > deadline:
                    reason = "timeout"
                if reason is not None and signalled_at is None:
                    _kill(proc, signal.SIGTERM)
                    signalled_at = now
            if signalled_at is not None and now - signalled_at > self.stop_grace_s:
                store.add_event(
                    job.id,
                    f"Training did not stop within {self.stop_grace_s:.0f}s; killed",
                    level="warn",
                )
                _kill(proc, signal.SIGKILL)
                signalled_at = float("inf")
            time.sleep(self.poll_s)
        return self._finish(job, proc.returncode, reason, job_dir, out_dir, tail)

    def _lost(self, job: Job, proc: subprocess.Popen) -> str:
        """Another worker holds the job now: kill this training at once (two runs of one job
        would write the same checkpoints) and write nothing more."""
        log.warning("lost the lease of %s; stopping its training", job.id)
        _kill(proc, signal.SIGKILL)
        proc.wait()
        return "lost"

    def _sync_checkpoints(self, job: Job, out_dir: Path, tail: _Tail) -> None:
        on_disk = _checkpoints(out_dir)
        steps = [step for step, _ in on_disk]
        if steps == tail.synced:
            return
        tail.synced = steps
        found = []
        for step, path in on_disk:
            rec = tail.by_step.get(step, {})
            metrics = {
                k: rec.get(k)
                for k in (
                    "train_loss",
                    "train_mean_token_accuracy",
                    "valid_loss",
                    "valid_mean_token_accuracy",
                )
            }
            # A preference (DPO) run's reward accuracy and margin, where it has them.
            metrics.update({k: rec[k] for k in _DPO_CHECKPOINT_KEYS if k in rec})
            found.append((step, path, metrics))
        self.store.sync_checkpoints(job, found, self.worker_id)

    def _finish(
        self, job: Job, rc: int, reason: str | None, job_dir: Path, out_dir: Path, tail: _Tail
    ) -> str:
        store, me = self.store, self.worker_id
        result: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            result = json.loads((job_dir / "result.json").read_text())
        step = _latest_step(out_dir) or 0
        if rc == 0:
            return self._succeed(job, out_dir, result)
        if reason == "timeout":
            msg = (
                f"The job ran past this server's wall-clock limit of {self.max_wall_s:g} "
                f"seconds and was stopped at step {step}. Lower optim.max_steps or n_epochs."
            )
            err = job_error("wall_clock_limit_exceeded", msg)
            store.finish_job(job.id, me, "failed", msg, level="error", error=err)
            return "failed"
        if result.get("status") == "failed" or (rc not in (130, -15, -9) and reason is None):
            err = _failure(result.get("error"), rc)
            # The log's last lines (traceback, paths) are for the operator, not the events.
            log_path = job_dir / "logs" / f"attempt-{job.attempts}.log"
            log.error(
                "job %s failed (%s); log %s:\n%s",
                job.id,
                err["code"],
                log_path,
                _log_tail(log_path),
            )
            store.finish_job(
                job.id,
                me,
                "failed",
                f"Fine-tuning job failed: {err['message']}",
                level="error",
                error=err,
            )
            return "failed"
        if reason == "cancel":
            store.finish_job(job.id, me, "cancelled", "Fine-tuning job cancelled")
            return "cancelled"
        if reason == "pause":
            store.finish_job(
                job.id,
                me,
                "paused",
                f"Fine-tuning job paused at step {step}",
            )
            return "paused"
        # Stopped without a request (worker shutdown, or someone signalled training): requeue.
        store.finish_job(
            job.id,
            me,
            "queued",
            f"Worker {me} stopped; job re-queued to resume from step {step}",
            level="warn",
        )
        return "queued"

    def _succeed(self, job: Job, out_dir: Path, result: dict[str, Any]) -> str:
        store, me = self.store, self.worker_id
        if not store.heartbeat(job.id, me, self.lease_s)[0]:
            return "lost"  # the worker that took over trains (or already trained) it again
        result_files = []
        csv_path = out_dir / "results.csv"
        if csv_path.is_file():
            tmp = store.data_dir / "files" / f".tmp-{new_id('r', 8)}"
            shutil.copyfile(csv_path, tmp)
            f = store.add_file(job.org_id, "step_metrics.csv", "fine-tune-results", tmp)
            result_files.append(f.id)
        model_id = store.register_model(job, out_dir)
        metrics = result.get("metrics") or {}
        ok = store.finish_job(
            job.id,
            me,
            "succeeded",
            "The job has successfully completed",
            events=[(f"New fine-tuned model created: {model_id}", metrics)],
            fine_tuned_model=model_id,
            result_files=result_files,
            trained_tokens=metrics.get("tokens"),
        )
        return "succeeded" if ok else "lost"


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints of a run, oldest first."""
    return checkpoint_steps(out_dir / CHECKPOINTS_DIR)


def _latest_step(out_dir: Path) -> int | None:
    found = _checkpoints(out_dir)
    return found[-1][0] if found else None


def _kill(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _failure(reported: Any, rc: int) -> dict[str, Any]:
    """The job's `error` from what the runner wrote (an error object; a plain message from a
    stand-in runner) or, with nothing written, from its exit status."""
    if isinstance(reported, dict) and reported.get("message"):
        return job_error(
            str(reported.get("code") or "training_failed"),
            str(reported["message"]),
            reported.get("param"),
        )
    if isinstance(reported, str) and reported:
        return job_error("training_failed", reported)
    if rc < 0:
        return job_error("training_failed", f"The training process was killed (signal {-rc}).")
    return job_error("training_failed", f"Training exited with status {rc}.")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def results_rows(csv_text: str) -> list[dict[str, str]]:
    """Parse a results CSV (as the Files API returns it) into rows."""
    return list(csv.DictReader(io.StringIO(csv_text)))
