"""A stand-in for `python -m tuneforge.jobs.runner JOB_DIR` that trains nothing but speaks
the same protocol, in milliseconds: run.json after "setup", one metrics.jsonl record per step,
`checkpoints/step-N/` every 2 steps (resumed from like the real loop), a checkpoint and exit
130 on SIGTERM, result.json and exit 0 at the end. Steps: optim.max_steps; `FAKE_FAIL=1` in
the environment makes it fail at step 2; `FAKE_STEP_S` sets a step's time (default 0.1 s).

While it runs it holds an exclusive lock on JOB_DIR/run.lock (released by the kernel however
it dies); a second run of the same job at the same time finds it taken and records that in
JOB_DIR/overlaps (the soak test asserts there are none).
"""

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

job_dir = Path(sys.argv[1])
lock = open(job_dir / "run.lock", "a")  # noqa: SIM115 - held until the process ends
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    with open(job_dir / "overlaps", "a") as f:
        f.write(f"{os.getpid()} started while another run of this job was running\n")
step_s = float(os.environ.get("FAKE_STEP_S", "0.1"))
overrides = json.loads((job_dir / "overrides.json").read_text())
out = Path(overrides["output.dir"])
total = int(overrides.get("optim.max_steps", 10))
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)


def write_json(path, data):
    """Atomically, as the real runner does: the worker may read the file at any moment."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def checkpoint(step):
    d = out / "checkpoints" / f"step-{step:06d}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_model.safetensors").write_bytes(b"w")
    (d / "adapter_config.json").write_text("{}")
    (d / "trainer_state.json").write_text(json.dumps({"step": step}))


ckpts = sorted((out / "checkpoints").glob("step-*")) if out.is_dir() else []
start = int(ckpts[-1].name.split("-")[1]) if ckpts else 0
out.mkdir(parents=True, exist_ok=True)
metrics = out / "metrics.jsonl"
kept = []
if metrics.is_file() and start:
    kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= start]
metrics.write_text("".join(line + "\n" for line in kept))
hp = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0}
write_json(job_dir / "run.json", {"total_steps": total, "hyperparameters": hp})
print(f"resumed from step {start}" if start else "fresh start", flush=True)
for step in range(start + 1, total + 1):
    time.sleep(step_s)
    if os.environ.get("FAKE_FAIL") and step == 2:
        write_json(job_dir / "result.json", {"status": "failed", "error": "boom"})
        sys.exit(1)
    rec = {"step": step, "train_loss": 1.0 / step, "tokens": 10 * step, "elapsed": 0.1 * step}
    with open(metrics, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if step % 2 == 0 or stop:
        checkpoint(step)
    if stop:
        write_json(job_dir / "result.json", {"status": "stopped", "step": step})
        sys.exit(130)
(out / "adapter_model.safetensors").write_bytes(b"w")
(out / "adapter_config.json").write_text("{}")
(out / "results.csv").write_text(
    "step,train_loss\n" + "".join(f"{s},{1 / s}\n" for s in range(1, total + 1))
)
write_json(
    job_dir / "result.json",
    {"status": "completed", "step": total, "metrics": {"tokens": 10 * total}},
)
