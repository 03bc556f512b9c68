"""Worker processes racing to claim jobs, on SQLite and on PostgreSQL: a job is never claimed
while another worker's lease on it is live (claims of one job never overlap in time), and
every job is claimed."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

from jobs_data import write_chat

from tuneforge.jobs import JobCreate

RACER = Path(__file__).with_name("claim_racer.py")


def test_racing_worker_processes_never_share_a_live_lease(store, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    jobs = {
        store.create_job("org-a", JobCreate(model="tiny-base", training_file=f.id)).id
        for _ in range(6)
    }
    go = tmp_path / "go"
    url = "-" if store.url.startswith("sqlite") else store.url
    lease, duration = 0.5, 2.5
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(RACER),
                str(store.data_dir),
                url,
                f"w{i}",
                str(lease),
                str(duration),
                str(go),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    claims = [json.loads(line) for out in outs for line in out.splitlines()]

    # Each job was re-claimed about every `lease` seconds (nobody heartbeats), by any racer:
    # never while the previous lease was live.
    for job_id in {c["job"] for c in claims}:
        mine = sorted((c for c in claims if c["job"] == job_id), key=lambda c: c["start"])
        for before, after in itertools.pairwise(mine):
            assert after["start"] > before["end"], (job_id, before, after)
    assert {c["job"] for c in claims} == jobs  # every job claimed
    assert len(claims) >= 2 * len(jobs)  # leases did expire and get re-claimed
    assert len({c["worker"] for c in claims}) > 1  # a real race: several racers won jobs
    final = {j.id: j for j in store.list_jobs("org-a").data}
    assert all(final[j].attempts == sum(c["job"] == j for c in claims) for j in jobs)
