"""The training subprocess of a job: `python -m tuneforge.jobs.runner JOB_DIR`.

With `--standby` instead of JOB_DIR, the runner imports torch and transformers first and
then waits for its job on stdin: the worker keeps one such process ready, so a job starts
training without paying for those imports (several seconds) after it is claimed.

Reads `JOB_DIR/overrides.json` (TrainConfig overrides written by the worker), runs the
recipe, and writes two small files the worker reads:

- `JOB_DIR/run.json` once setup is done: total steps and the resolved hyperparameters;
- `JOB_DIR/result.json` at the end: status (completed / stopped / failed) and, on failure,
  the job's `error` object (`tuneforge.jobs.failures`: code, message, param; no paths).

Exit status: 0 completed, 130 stopped on SIGTERM/SIGINT (after a checkpoint: the loop checks
the request at every optimizer step; a signal that comes during setup is held until the loop
listens), 1 failed. The process dies with its worker: on Linux through
PR_SET_PDEATHSIG, elsewhere through a watchdog thread, so a SIGKILLed worker never leaves a
training process behind to race the worker that takes the job over.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneforge.training.loop import FinetuneRecipe

PARENT_ENV = "TUNEFORGE_WORKER_PID"  # set by tuneforge.jobs.worker


def _die_with_parent() -> None:
    expected = int(os.environ.get(PARENT_ENV, "0") or 0)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if expected and os.getppid() != expected:
        os._exit(137)  # the worker died before we could watch it

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if expected and os.getppid() != expected:
                os._exit(137)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


class _EarlyStop:
    """SIGTERM / SIGINT that arrive before the training loop installs its own handlers (while
    torch imports, or the model loads) are remembered instead of killing the process, and
    re-delivered once the loop listens: a pause or cancel then still ends training after its
    first optimizer step, with a checkpoint, never by the default action mid-setup."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._remember)

    def _remember(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def redeliver(self) -> None:
        if self.signum is not None:
            os.kill(os.getpid(), self.signum)


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _standby() -> Path | None:
    """Import the heavy libraries now, then wait for a job: one line "JOB_DIR<TAB>LOG" on
    stdin. Output goes to LOG from then on. None on end of input (the worker stopped)."""
    import tuneforge.training.loop  # noqa: F401  (torch, transformers, peft: seconds)

    line = sys.stdin.readline().rstrip("\n")
    if not line:
        return None
    job_dir, _, log = line.partition("\t")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return Path(job_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tuneforge.jobs.runner JOB_DIR | --standby", file=sys.stderr)
        return 2
    _die_with_parent()
    early = _EarlyStop()
    if argv[0] == "--standby":
        found = _standby()
        if found is None:
            return 0
        job_dir = found
    else:
        job_dir = Path(argv[0])
    result_path = job_dir / "result.json"
    try:
        import warnings

        from rich.console import Console
        from transformers.utils import logging as hf_logging

        from tuneforge.jobs.spec import resolved_hyperparameters
        from tuneforge.training.config import load_config
        from tuneforge.training.loop import run_training

        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        overrides = json.loads((job_dir / "overrides.json").read_text())
        cfg = load_config(None, overrides)
        # Plain text on stderr (the worker's log file): no live progress bar redraws.
        console = Console(file=sys.stderr, force_terminal=False, width=120)

        def on_event(recipe: FinetuneRecipe, event: str, data: dict) -> None:
            # The worker follows the steps in metrics.jsonl and stops the run by signal: the
            # runner only needs the start, when the loop's SIGTERM / SIGINT handlers listen.
            if event != "start":
                return
            early.redeliver()
            resolved = recipe.cfg.model_dump(mode="json")
            _write(
                job_dir / "run.json",
                {
                    "total_steps": recipe.total_steps,
                    "start_step": recipe.state.step,
                    "resumed_from": str(recipe.resume_from) if recipe.resume_from else None,
                    "hyperparameters": resolved_hyperparameters(resolved, recipe.width),
                    "method": resolved.get("method"),
                },
            )

        result = run_training(cfg, console, callback=on_event)
    except Exception as err:  # report any failure to the worker, then exit non-zero
        from tuneforge.jobs.failures import describe

        # The traceback goes to the job's log (the operator's); the client gets `error`, an
        # OpenAI-shaped object without paths or traceback.
        buf = io.StringIO()
        traceback.print_exc(file=buf)
        sys.stderr.write(buf.getvalue())
        try:
            overrides = json.loads((job_dir / "overrides.json").read_text())
        except (OSError, ValueError):
            overrides = {}
        _write(result_path, {"status": "failed", "error": describe(err, overrides)})
        return 1
    _write(
        result_path,
        {
            "status": result.status,
            "step": result.step,
            "metrics": result.metrics,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        },
    )
    return 0 if result.status == "completed" else 130


if __name__ == "__main__":
    sys.exit(main())
