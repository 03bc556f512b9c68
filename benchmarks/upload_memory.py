"""Server memory while a large JSONL is uploaded and validated, against reading it whole.

Starts `tuneforge serve` (a tiny local model, no worker) as a subprocess, generates a JSONL
of `--mib` MiB of distinct chat examples, uploads it with the official `openai` client (sent
from the open file, streamed), waits until the file is `processed`, and samples the server's
RSS (/proc/PID/status) every few milliseconds throughout. The peer, measured in the same run
on the same file: the whole-file approach uploads used to take, `json.loads` of every line
into a list, in a subprocess of its own. Prints both peak RSS growths and their ratio.

    python benchmarks/upload_memory.py               # 500 MiB
    python benchmarks/upload_memory.py --mib 100 --line-bytes 400
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

MiB = 1024 * 1024
KEY = "sk-bench"

PEER = r"""
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = rss()
with open(sys.argv[1], "rb") as f:
    rows = [json.loads(line) for line in f]
print(len(rows), hwm() - before)
"""


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Sampler(threading.Thread):
    """The peak RSS of a process, sampled until stopped."""

    def __init__(self, pid: int, every_s: float = 0.005):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_of(self.pid))
            time.sleep(self.every_s)


def write_jsonl(path: Path, size: int, line_bytes: int) -> int:
    """About `size` bytes of distinct chat examples; returns the number of lines."""
    filler = "lorem ipsum dolor sit amet " * (line_bytes // 27 + 1)
    written = n = 0
    with open(path, "wb", buffering=8 * MiB) as f:
        while written < size:
            messages = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Question {n}: {filler[: max(0, line_bytes - 160)]}"},
                {"role": "assistant", "content": f"Answer number {n}."},
            ]
            line = (json.dumps({"messages": messages}) + "\n").encode()
            f.write(line)
            written += len(line)
            n += 1
    return n


def build_model_folder(root: Path) -> Path:
    from tuneforge.modeling.tiny import build_model, save_model_folder, train_tokenizer

    tokenizer = train_tokenizer(["The quick brown fox jumps over the lazy dog."] * 50, 512)
    return save_model_folder(build_model(tokenizer, arch="llama"), tokenizer, root / "tiny")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("the server exited during startup")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    sys.exit("the server did not start")


def upload(client, path: Path, timeout: float = 900) -> tuple[object, float, float]:
    """(the processed file, seconds to answer the upload, seconds until processed)."""
    start = time.monotonic()
    with open(path, "rb") as fh:
        created = client.files.create(file=(path.name, fh), purpose="fine-tune")
    answered = time.monotonic() - start
    while True:
        f = client.files.retrieve(created.id)
        if f.status != "uploaded":
            return f, answered, time.monotonic() - start
        if time.monotonic() - start > timeout:
            sys.exit(f"{created.id} was not validated within {timeout}s")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=500, help="size of the generated JSONL")
    ap.add_argument("--line-bytes", type=int, default=600, help="about this long per example")
    args = ap.parse_args()
    from openai import OpenAI

    work = Path(tempfile.mkdtemp(prefix="tf-upload-mem-"))
    proc = None
    try:
        folder = build_model_folder(work / "models")
        data = work / f"train-{args.mib}mib.jsonl"
        t = time.monotonic()
        lines = write_jsonl(data, args.mib * MiB, args.line_bytes)
        size = data.stat().st_size
        print(f"dataset: {size / MiB:.0f} MiB, {lines:,} lines ({time.monotonic() - t:.1f}s)")

        port = free_port()
        env = {
            **os.environ,
            "TUNEFORGE_API_KEYS": KEY,
            "TUNEFORGE_MAX_UPLOAD_BYTES": str(size + MiB),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuneforge", "serve", "--model-dir", str(folder.parent),
             "--base-model", folder.name, "--port", str(port), "--no-worker",
             "--data-dir", str(work / "data")],
            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        client = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=900)
        # Warm up: the first upload imports the multipart parser and opens the job store.
        small = work / "warmup.jsonl"
        write_jsonl(small, 64 * 1024, args.line_bytes)
        upload(client, small)
        time.sleep(0.5)
        baseline = rss_of(proc.pid)
        sampler = Sampler(proc.pid)
        sampler.start()
        f, answered, processed = upload(client, data)
        sampler.done.set()
        sampler.join()
        grown = sampler.peak - baseline
        report = f.model_extra.get("report") or {}
        print(
            f"tuneforge: upload answered in {answered:.1f}s ({f.status} after {processed:.1f}s, "
            f"{report.get('examples_valid', 0):,} valid examples); server RSS "
            f"{baseline / MiB:.0f} MiB at rest, peak +{grown / MiB:.1f} MiB"
        )
        if f.status != "processed":
            print(f"  status_details: {f.status_details}")

        t = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", PEER, str(data)], capture_output=True, text=True, check=True
        )
        n, peer_grown = map(int, out.stdout.split())
        print(
            f"peer (json.loads of every line into a list): {n:,} rows, peak RSS "
            f"+{peer_grown / MiB:.0f} MiB ({time.monotonic() - t:.1f}s)"
        )
        print(f"ratio: the whole-file read takes {peer_grown / max(grown, 1):.0f}x the memory")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
