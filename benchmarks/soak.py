"""Soak: worker processes and tiny jobs under random SIGKILLs, on SQLite and on PostgreSQL.

4 worker processes (`tuneforge.jobs.Worker`, the real claim / lease / heartbeat / outcome
code) run 200 tiny jobs whose training is the stand-in runner of the tests
(tests/jobs/fake_runner.py: the real runner's protocol, checkpoints every 2 steps, 0.1 s a
step). A "server" process creates the jobs through the store, as the HTTP route does, each
with an Idempotency-Key. Every 1-3 s one of them is SIGKILLed and restarted: a worker (its
training dies with it, its lease expires, another worker resumes the job from its checkpoint)
or, one time in two while it submits and once it has created jobs since its last start, the
server (restarted, it submits every job again under the same keys).

At the end it checks, per store, that:
- there is exactly one job per key, and every job ended `succeeded`, exactly once;
- no job ran twice at the same time (the stand-in runner holds a lock on its job's folder
  and records any run that found it taken);
- no event was lost or duplicated: each job's metrics events are steps 1..N once each, and
  its created / model-created / completed events appear exactly once.

Prints the figures (jobs, kills, re-runs, wall time) per store; exits 1 on any problem.
Bounded: it stops by itself after --time-limit seconds (a problem, if jobs are left).

Usage:
    python benchmarks/soak.py [--store sqlite|postgresql|both] [--jobs 200] [--workers 4]
                              [--steps 4] [--time-limit 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAKE_RUNNER = ROOT / "tests" / "jobs" / "fake_runner.py"
ORG = "org-soak"
LEASE_S = 2.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# ---------------------------------------------------------------------- child processes
def _role_worker(data_dir: str, url: str | None, worker_id: str) -> None:
    from tuneforge.jobs import JobStore, Worker

    store = JobStore(data_dir, url, migrate=False)
    worker = Worker(
        store,
        worker_id=worker_id,
        lease_s=LEASE_S,
        poll_s=0.1,
        idle_s=0.1,
        prewarm=False,
        command=[sys.executable, str(FAKE_RUNNER)],
    )
    signal.signal(signal.SIGTERM, lambda *_: worker.stop_event.set())
    worker.run()


def _role_server(data_dir: str, url: str | None, file_id: str, jobs: int, steps: int) -> None:
    from tuneforge.jobs import JobCreate, JobStore
    from tuneforge.jobs.limits import JobLimits

    store = JobStore(data_dir, url, migrate=False)
    store.limits = JobLimits(max_active_jobs=jobs)  # all of them may wait in the queue at once
    method = {"type": "supervised", "supervised": {"tuneforge": {"optim.max_steps": steps}}}
    for i in range(jobs):  # after a restart, again from the first: the keys make it a no-op
        req = JobCreate(model="tiny-base", training_file=file_id, method=method)
        store.create_job(ORG, req, idempotency_key=f"soak-{i}")


def _spawn(role: str, *args: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--role", role, *map(str, args)],
        env=_env(),
        stdin=subprocess.DEVNULL,
    )


# ---------------------------------------------------------------------- the soak
def run_soak(
    url: str | None,
    data_dir: Path,
    *,
    jobs: int = 200,
    workers: int = 4,
    steps: int = 4,
    time_limit: float = 600.0,
    seed: int = 0,
) -> tuple[dict[str, Any], list[str]]:
    """Run one soak on the store at `url` (None: SQLite in `data_dir`). Returns the figures
    and the problems found (empty when every check passed)."""
    from tuneforge.jobs import JobStore

    rng = random.Random(seed)
    store = JobStore(data_dir, url)  # creates and migrates the schema once
    upload = data_dir / "upload.jsonl"
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is the balance of account {i}?"},
                    {"role": "assistant", "content": f"Account {i} holds {10 * i + 7} dollars."},
                ]
            }
        )
        for i in range(16)
    ]
    upload.write_text("\n".join(lines) + "\n")
    file_id = store.add_file(ORG, "train.jsonl", "fine-tune", upload).id
    url_arg = url or "-"
    generation = Counter()

    def start(name: str) -> subprocess.Popen:
        generation[name] += 1
        if name == "server":
            return _spawn("server", data_dir, url_arg, file_id, jobs, steps)
        return _spawn("worker", data_dir, url_arg, f"{name}-{generation[name]}")

    procs = {f"w{i}": start(f"w{i}") for i in range(workers)}
    procs["server"] = start("server")
    server_done, server_started_at = False, 0
    kills = Counter()
    problems: list[str] = []
    t0 = time.monotonic()
    next_kill = t0 + rng.uniform(1.0, 3.0)
    try:
        while time.monotonic() - t0 < time_limit:
            finished = sum(store.count_jobs(st) for st in ("succeeded", "failed", "cancelled"))
            if server_done and finished >= jobs:
                break
            for name, proc in list(procs.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                if name == "server" and rc == 0:
                    server_done = True
                    del procs[name]
                    continue
                problems.append(f"{name} exited by itself with status {rc}")
                procs[name] = start(name)
            now = time.monotonic()
            if now >= next_kill:
                # The server is the victim one time in two while it submits, but only once it
                # has created jobs since its last start: its restart pays for the imports of
                # job planning (many seconds here), and it must get on.
                names = sorted(n for n in procs if n != "server")
                server_ready = "server" in procs and store.count_jobs() > server_started_at
                victim = "server" if server_ready and rng.random() < 1 / 2 else None
                victim = victim or rng.choice(names)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                kills["server" if victim == "server" else "worker"] += 1
                procs[victim] = start(victim)
                if victim == "server":
                    server_started_at = store.count_jobs()
                next_kill = now + rng.uniform(1.0, 3.0)
            time.sleep(0.1)
        wall = time.monotonic() - t0
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    problems += _check(store, jobs, steps)
    all_jobs = store.list_jobs(ORG, limit=10000).data
    attempts = sum(j.attempts for j in all_jobs)
    figures = {
        "store": "sqlite" if url is None else url.split(":", 1)[0],
        "jobs": len(all_jobs),
        "succeeded": store.count_jobs("succeeded"),
        "worker_kills": kills["worker"],
        "server_kills": kills["server"],
        "re_runs": attempts - len(all_jobs),
        "wall_s": round(wall, 1),
        "jobs_per_s": round(len(all_jobs) / wall, 2) if wall else None,
    }
    store.close()
    return figures, problems


def _check(store: Any, jobs: int, steps: int) -> list[str]:
    problems = []
    all_jobs = store.list_jobs(ORG, limit=10000).data
    if len(all_jobs) != jobs:
        problems.append(f"{len(all_jobs)} jobs for {jobs} idempotency keys")
    want_steps = list(range(1, steps + 1))
    for job in all_jobs:
        if job.status != "succeeded":
            problems.append(f"{job.id}: {job.status} {job.error}")
            continue
        events = store.all_events(job.id)
        metric_steps = [e.data["step"] for e in events if e.type == "metrics"]
        if metric_steps != want_steps:
            problems.append(f"{job.id}: metrics events for steps {metric_steps}")
        messages = Counter(e.message.split(":")[0] for e in events)
        for once in ("Created fine-tuning job", "New fine-tuned model created"):
            if messages[once] != 1:
                problems.append(f"{job.id}: {messages[once]} '{once}' events")
        if messages["The job has successfully completed"] != 1:
            problems.append(
                f"{job.id}: completed {messages['The job has successfully completed']}x"
            )
        overlaps = store.job_dir(job.id) / "overlaps"
        if overlaps.exists():
            problems.append(f"{job.id}: ran twice at the same time: {overlaps.read_text()!r}")
    models = store.list_models(ORG, checkpoints=False)
    if len(models) != len(all_jobs):
        problems.append(f"{len(models)} fine-tuned models for {len(all_jobs)} jobs")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role == "worker":
        _role_worker(rest[0], None if rest[1] == "-" else rest[1], rest[2])
        return 0
    if args.role == "server":
        _role_server(
            rest[0], None if rest[1] == "-" else rest[1], rest[2], int(rest[3]), int(rest[4])
        )
        return 0

    sys.path.insert(0, str(ROOT))
    failed = False
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    with tempfile.TemporaryDirectory(prefix="tuneforge-soak-") as tmp:
        for kind in stores:
            cluster = url = None
            if kind == "postgresql":
                from tests.postgres import PostgresCluster

                cluster = PostgresCluster.start(Path(tmp) / "pgdata")
                url = cluster.new_database()
            try:
                figures, problems = run_soak(
                    url,
                    Path(tmp) / f"data-{kind}",
                    jobs=args.jobs,
                    workers=args.workers,
                    steps=args.steps,
                    time_limit=args.time_limit,
                    seed=args.seed,
                )
            finally:
                if cluster is not None:
                    cluster.stop()
            print(json.dumps(figures), flush=True)
            for p in problems[:50]:
                print("  PROBLEM", p)
            failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
