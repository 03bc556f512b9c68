"""One racing worker process for tests/jobs/test_jobs_race.py: claims jobs as fast as it can
for DURATION seconds and prints one JSON line per claim won. It never heartbeats, so a lease
it won expires after LEASE seconds and the job is up for grabs again.

    python claim_racer.py DATA_DIR URL|- WORKER_ID LEASE DURATION GO_FILE
"""

import json
import sys
import time
from pathlib import Path

from tuneforge.jobs.store import JobStore

data_dir, url, worker_id, lease, duration, go = sys.argv[1:7]
store = JobStore(data_dir, None if url == "-" else url, migrate=False)
go_file = Path(go)
while not go_file.exists():  # start all racers at once
    time.sleep(0.002)
end = time.time() + float(duration)
while time.time() < end:
    job = store.claim(worker_id, float(lease))
    if job is None:
        time.sleep(0.002)
        continue
    start = job.lease_expires_at - float(lease)
    print(
        json.dumps(
            {"job": job.id, "worker": worker_id, "start": start, "end": start + float(lease)}
        ),
        flush=True,
    )
store.close()
