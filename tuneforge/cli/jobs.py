"""`tuneforge worker` and `tuneforge jobs ...` (the fine-tuning job store: tuneforge.jobs)."""

from __future__ import annotations

import json

import typer

from tuneforge.cli.common import (
    JSON_OPTION,
    StoreOptions,
    console,
    err_console,
    store_call,
    store_options,
)

jobs_app = typer.Typer(help="Fine-tuning jobs: list, show, events, cancel.", no_args_is_help=True)

_JOB_ID = typer.Argument(..., help="The job id (ftjob-...).")


@store_options("data_dir", "database_url")
def worker(
    *,
    store: StoreOptions,
    lease_seconds: float = typer.Option(
        30.0, "--lease-seconds", help="A worker silent this long is presumed dead."
    ),
    once: bool = typer.Option(False, "--once", help="Exit when no job is waiting."),
    prewarm: bool = typer.Option(
        True,
        "--prewarm/--no-prewarm",
        help="Keep a training process with torch imported ready for the next job.",
    ),
    max_job_seconds: float | None = typer.Option(
        None,
        "--max-job-seconds",
        min=1,
        help="Wall-clock limit of one run of a job; past it training stops and the job fails "
        "(default 86400).",
    ),
) -> None:
    """Run fine-tuning jobs from the store, one at a time (Ctrl-C re-queues the current job)."""
    import logging
    import signal
    import threading

    from tuneforge.jobs import JobStore, Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    w = Worker(
        JobStore.open(store.data_dir, store.database_url),
        lease_s=lease_seconds,
        prewarm=prewarm,
        max_wall_s=max_job_seconds,
    )
    err_console.print(f"worker {w.worker_id} on {store.data_dir}", highlight=False)
    w.run(stop, once=once)


@jobs_app.command("list")
@store_options()
def jobs_list(
    *,
    store: StoreOptions,
    limit: int = typer.Option(20, "--limit", min=1, help="How many jobs, newest first."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List fine-tuning jobs, newest first."""
    from rich.table import Table

    jobs = store_call(store.client().list_jobs, limit)
    if as_json:
        print(json.dumps(jobs, indent=2))
        return
    table = Table()
    for col in ("id", "org", "model", "status", "step", "fine_tuned_model"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        tf = j.get("tuneforge") or {}
        step = f"{tf.get('step', '')}/{tf.get('total_steps') or '?'}"
        table.add_row(
            j["id"],
            j["organization_id"],
            j["model"],
            j["status"],
            step,
            j["fine_tuned_model"] or "",
        )
    console.print(table)


@jobs_app.command("show")
@store_options()
def jobs_show(job_id: str = _JOB_ID, *, store: StoreOptions) -> None:
    """Print a job as JSON (OpenAI's fine_tuning.job object), with its checkpoints."""
    client = store.client()
    job = store_call(client.get_job, job_id)
    job["checkpoints"] = store_call(client.checkpoints, job_id)
    print(json.dumps(job, indent=2))


@jobs_app.command("events")
@store_options()
def jobs_events(
    job_id: str = _JOB_ID,
    *,
    store: StoreOptions,
    limit: int = typer.Option(100, "--limit", min=1, help="How many of the newest events."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Print a job's newest events, oldest of them first."""
    from datetime import datetime

    events = list(reversed(store_call(store.client().events, job_id, limit)))
    if as_json:
        print(json.dumps(events, indent=2))
        return
    for e in events:
        when = datetime.fromtimestamp(e["created_at"]).strftime("%H:%M:%S")
        style = {"warn": "yellow", "error": "red"}.get(e["level"], "")
        console.print(f"{when} {e['message']}", style=style, markup=False, highlight=False)


@jobs_app.command("cancel")
@store_options()
def jobs_cancel(job_id: str = _JOB_ID, *, store: StoreOptions) -> None:
    """Cancel a job (a running one stops at the end of its current step)."""
    job = store_call(store.client().cancel, job_id)
    pending = (job.get("tuneforge") or {}).get("control") == "cancel"
    console.print(f"{job['id']}: {'cancelling' if pending else job['status']}")
